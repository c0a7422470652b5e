//! Enrollment and access records (docs/security.md): bootstrap tokens, API
//! tokens, overlay addresses and the audit log. Secrets arrive here only as
//! their hashes.

use super::Store;
use super::usage::{API_TOKEN_COLUMNS, ApiToken, ApiTokenRow, api_token_of, quota_values};
use crate::ControllerError;
use crate::auth::{Quota, Role};

/// Runs the same statement text on whichever pool the store has.
/// A bootstrap token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub token_id: String,
    /// `k=v` labels the enrolled node receives, comma-separated.
    pub labels: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub used_unix_ms: Option<i64>,
    pub used_by: Option<String>,
    pub revoked_unix_ms: Option<i64>,
}

/// Why a bootstrap token was not accepted (each says what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("unknown bootstrap token: ask an operator for one (fleetctl tokens create)")]
    Unknown,
    #[error("bootstrap token already used (by {0}): each token enrolls one node; ask for a new one")]
    Used(String),
    #[error("bootstrap token revoked: ask an operator for a new one")]
    Revoked,
    #[error("bootstrap token expired: ask an operator for a new one")]
    Expired,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_unix_ms: i64,
    /// Who: an API token's name, or `node:<id>` for an enrollment.
    pub actor: String,
    /// The call, e.g. `SetDesiredState`.
    pub action: String,
    /// What it acted on, e.g. a node id (never a secret).
    pub target: String,
    /// `ok`, or the gRPC code and message it ended with.
    pub result: String,
}

type TokenRow = (String, String, i64, i64, Option<i64>, Option<String>, Option<i64>);

fn token_of(r: TokenRow) -> BootstrapToken {
    BootstrapToken {
        token_id: r.0,
        labels: r.1,
        created_unix_ms: r.2,
        expires_unix_ms: r.3,
        used_unix_ms: r.4,
        used_by: r.5,
        revoked_unix_ms: r.6,
    }
}

impl Store {
    /// The clock's high-water mark (`crate::clock`): 0 before the first one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn clock_high_water(&self) -> Result<i64, ControllerError> {
        let sql = "SELECT at_ms FROM clock_high_water WHERE id = 1";
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(sql).fetch_optional(p).await?);
        Ok(v.unwrap_or(0))
    }

    /// Raises the clock's high-water mark to `at_ms` (never lowers it: every
    /// replica's clock counts).
    ///
    /// # Errors
    /// Database errors.
    pub async fn raise_clock_high_water(&self, at_ms: i64) -> Result<(), ControllerError> {
        match self {
            Store::Postgres(p, _) => {
                let sql = "UPDATE clock_high_water SET at_ms = GREATEST(at_ms, $1) WHERE id = 1";
                sqlx::query(sql).bind(at_ms).execute(p).await?;
            }
            Store::Sqlite(p) => {
                let sql = "UPDATE clock_high_water SET at_ms = MAX(at_ms, $1) WHERE id = 1";
                sqlx::query(sql).bind(at_ms).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Stores a new bootstrap token's hash.
    ///
    /// # Errors
    /// Database errors (a duplicate id or hash among them).
    pub async fn create_bootstrap_token(
        &self,
        token_id: &str,
        hash: &str,
        labels: &str,
        created_unix_ms: i64,
        expires_unix_ms: i64,
    ) -> Result<(), ControllerError> {
        let sql = "INSERT INTO bootstrap_tokens (token_id, hash, labels, created_ms, expires_ms) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, p => sqlx::query(sql)
            .bind(token_id)
            .bind(hash)
            .bind(labels)
            .bind(created_unix_ms)
            .bind(expires_unix_ms)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Uses a bootstrap token once, for `node_id`: checks it (unknown, used,
    /// revoked, expired at `now_unix_ms`, the controller's `Clock`) and marks it
    /// used so that no second caller, even a concurrent one, can use it.
    ///
    /// # Errors
    /// `Ok(Err(why))` when refused; `Err` for database errors.
    pub async fn use_bootstrap_token(
        &self,
        hash: &str,
        node_id: &str,
        now_unix_ms: i64,
    ) -> Result<Result<BootstrapToken, TokenRefused>, ControllerError> {
        let sql = "SELECT token_id, labels, created_ms, expires_ms, used_ms, used_by, revoked_ms \
                   FROM bootstrap_tokens WHERE hash = $1";
        let row: Option<TokenRow> = on_pool!(self, p => sqlx::query_as(sql).bind(hash).fetch_optional(p).await?);
        let Some(token) = row.map(token_of) else { return Ok(Err(TokenRefused::Unknown)) };
        if let Some(by) = &token.used_by {
            return Ok(Err(TokenRefused::Used(by.clone())));
        }
        if token.revoked_unix_ms.is_some() {
            return Ok(Err(TokenRefused::Revoked));
        }
        if now_unix_ms >= token.expires_unix_ms {
            return Ok(Err(TokenRefused::Expired));
        }
        let mark = "UPDATE bootstrap_tokens SET used_ms = $1, used_by = $2 \
                    WHERE hash = $3 AND used_ms IS NULL AND revoked_ms IS NULL";
        let done = on_pool!(self, p => sqlx::query(mark).bind(now_unix_ms).bind(node_id).bind(hash).execute(p).await?.rows_affected());
        if done != 1 {
            return Ok(Err(TokenRefused::Used("another enrollment at the same moment".into())));
        }
        Ok(Ok(BootstrapToken { used_unix_ms: Some(now_unix_ms), used_by: Some(node_id.into()), ..token }))
    }

    /// Revokes an unused bootstrap token; `false` when there is no such token
    /// or it was already used or revoked.
    ///
    /// # Errors
    /// Database errors.
    pub async fn revoke_bootstrap_token(&self, token_id: &str, now_unix_ms: i64) -> Result<bool, ControllerError> {
        let sql = "UPDATE bootstrap_tokens SET revoked_ms = $1 \
                   WHERE token_id = $2 AND used_ms IS NULL AND revoked_ms IS NULL";
        let n =
            on_pool!(self, p => sqlx::query(sql).bind(now_unix_ms).bind(token_id).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Every bootstrap token, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_bootstrap_tokens(&self) -> Result<Vec<BootstrapToken>, ControllerError> {
        let sql = "SELECT token_id, labels, created_ms, expires_ms, used_ms, used_by, revoked_ms \
                   FROM bootstrap_tokens ORDER BY created_ms DESC, token_id";
        let rows: Vec<TokenRow> = on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await?);
        Ok(rows.into_iter().map(token_of).collect())
    }

    /// Stores an API token's hash under a unique name, with its role and quotas.
    ///
    /// # Errors
    /// Database errors (a name or hash already taken among them).
    pub async fn create_api_token(
        &self,
        name: &str,
        hash: &str,
        (role, quota): (Role, &Quota),
        created_unix_ms: i64,
    ) -> Result<(), ControllerError> {
        let sql = "INSERT INTO api_tokens (name, hash, role, created_ms, jobs_per_day, inference_s_per_day, \
                   queries_per_minute) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let [jobs, inference, queries] = quota_values(quota);
        on_pool!(self, p => sqlx::query(sql)
            .bind(name)
            .bind(hash)
            .bind(role.as_str())
            .bind(created_unix_ms)
            .bind(jobs)
            .bind(inference)
            .bind(queries)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// A live (not revoked) API token, by its hash: name, role, quotas.
    ///
    /// # Errors
    /// Database errors, or a stored role that is not a role.
    pub async fn api_token(&self, hash: &str) -> Result<Option<ApiToken>, ControllerError> {
        let sql = format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1 AND revoked_ms IS NULL");
        let row: Option<ApiTokenRow> =
            on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(hash).fetch_optional(p).await?);
        row.map(api_token_of).transpose()
    }

    /// Revokes an API token by name; `false` when there is no live one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn revoke_api_token(&self, name: &str, now_unix_ms: i64) -> Result<bool, ControllerError> {
        let sql = "UPDATE api_tokens SET revoked_ms = $1 WHERE name = $2 AND revoked_ms IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(now_unix_ms).bind(name).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// The overlay address of `node_id` in the IPv4 network `base/prefix`:
    /// the one it already has, or the next never-used one. The network's
    /// first host address is the controller's; the last is broadcast.
    ///
    /// # Errors
    /// The network is full (it says how many it holds), or database errors.
    pub async fn allocate_overlay_address(
        &self,
        base: std::net::Ipv4Addr,
        prefix: u8,
        node_id: &str,
        now_unix_ms: i64,
    ) -> Result<std::net::Ipv4Addr, ControllerError> {
        let size = 1u64 << (32 - u32::from(prefix.clamp(8, 30)));
        let first = u64::from(u32::from(base)) & !(size - 1);
        let (lowest, highest) = (first + 2, first + size - 2);
        let existing = "SELECT address FROM overlay_addresses WHERE node_id = $1";
        let mine: Option<i64> =
            on_pool!(self, p => sqlx::query_scalar(existing).bind(node_id).fetch_optional(p).await?);
        if let Some(a) = mine {
            return Ok(addr(a));
        }
        // The next above the highest ever given; a concurrent replica taking the
        // same one loses on the primary key and tries again.
        let (lo, hi) = (i64::try_from(lowest).unwrap_or(0), i64::try_from(highest).unwrap_or(0));
        let insert = "INSERT INTO overlay_addresses (address, node_id, allocated_ms) \
                      SELECT COALESCE(MAX(address) + 1, $1), $3, $4 FROM overlay_addresses \
                      WHERE address >= $1 AND address <= $2";
        for _ in 0..3 {
            let next: Option<i64> = {
                let sql = "SELECT MAX(address) FROM overlay_addresses WHERE address >= $1 AND address <= $2";
                on_pool!(self, p => sqlx::query_scalar(sql).bind(lo).bind(hi).fetch_one(p).await?)
            };
            if next.is_some_and(|m| m >= hi) {
                return Err(ControllerError::Io(format!(
                    "the overlay network {base}/{prefix} is full ({} node addresses, none ever reused): \
                     configure a larger security.overlay_cidr",
                    highest - lowest + 1
                )));
            }
            let r = on_pool!(self, p => sqlx::query(insert).bind(lo).bind(hi).bind(node_id).bind(now_unix_ms).execute(p).await.map(|r| r.rows_affected()));
            match r {
                Ok(_) => {
                    let a: i64 = on_pool!(self, p => sqlx::query_scalar(existing).bind(node_id).fetch_one(p).await?);
                    return Ok(addr(a));
                }
                // Another replica took that address (or enrolled this node): look again.
                Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Io("could not allocate an overlay address after 3 tries; retry the enrollment".into()))
    }

    /// Appends one audit record.
    ///
    /// # Errors
    /// Database errors.
    pub async fn append_audit(&self, e: &AuditEntry) -> Result<(), ControllerError> {
        let sql = "INSERT INTO audit_log (at_ms, actor, action, target, result) VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, p => sqlx::query(sql)
            .bind(e.at_unix_ms)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.result)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Audit records at or after `since_unix_ms`, newest first, at most `limit`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_audit(&self, since_unix_ms: i64, limit: u32) -> Result<Vec<AuditEntry>, ControllerError> {
        let sql = "SELECT at_ms, actor, action, target, result FROM audit_log WHERE at_ms >= $1 \
                   ORDER BY at_ms DESC LIMIT $2";
        let rows: Vec<(i64, String, String, String, String)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(since_unix_ms).bind(i64::from(limit)).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(at_unix_ms, actor, action, target, result)| AuditEntry { at_unix_ms, actor, action, target, result })
            .collect())
    }
}

/// An enrolled node: the public halves of its keys, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: String,
    /// WireGuard public key, base64.
    pub wg_public_key: String,
    /// The next WireGuard key while a rotation waits for the node's confirmation.
    pub wg_next_key: Option<String>,
    /// Ed25519 public key, base64.
    pub signing_key: String,
    /// SHA-256 (hex) of the broker password.
    pub broker_hash: String,
    /// `k=v` labels, comma-separated.
    pub labels: String,
    pub overlay_address: std::net::Ipv4Addr,
    pub enrolled_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
}

type IdentityRow = (String, String, Option<String>, String, String, String, i64, i64, Option<i64>);

const IDENTITY_COLUMNS: &str = "node_id, wg_public_key, wg_next_key, signing_key, broker_hash, labels, \
                                overlay_address, enrolled_ms, revoked_ms";

fn identity_of(r: IdentityRow) -> NodeIdentity {
    NodeIdentity {
        node_id: r.0,
        wg_public_key: r.1,
        wg_next_key: r.2,
        signing_key: r.3,
        broker_hash: r.4,
        labels: r.5,
        overlay_address: addr(r.6),
        enrolled_unix_ms: r.7,
        revoked_unix_ms: r.8,
    }
}

impl Store {
    /// Stores a new node identity; `false` when the node id is already
    /// enrolled (or was, and was revoked: ids are not reused).
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_identity(&self, n: &NodeIdentity) -> Result<bool, ControllerError> {
        let sql =
            format!("INSERT INTO node_identities ({IDENTITY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
        let r = on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&n.node_id)
            .bind(&n.wg_public_key)
            .bind(&n.wg_next_key)
            .bind(&n.signing_key)
            .bind(&n.broker_hash)
            .bind(&n.labels)
            .bind(i64::from(u32::from(n.overlay_address)))
            .bind(n.enrolled_unix_ms)
            .bind(n.revoked_unix_ms)
            .execute(p)
            .await
            .map(|r| r.rows_affected()));
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One node's identity, revoked or not.
    ///
    /// # Errors
    /// Database errors.
    pub async fn identity(&self, node_id: &str) -> Result<Option<NodeIdentity>, ControllerError> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM node_identities WHERE node_id = $1");
        let row: Option<IdentityRow> =
            on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(node_id).fetch_optional(p).await?);
        Ok(row.map(identity_of))
    }

    /// Every identity, revoked ones included.
    ///
    /// # Errors
    /// Database errors.
    pub async fn identities(&self) -> Result<Vec<NodeIdentity>, ControllerError> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM node_identities ORDER BY node_id");
        let rows: Vec<IdentityRow> = on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?);
        Ok(rows.into_iter().map(identity_of).collect())
    }

    /// Revokes a node; `false` when it is not enrolled or already revoked.
    ///
    /// # Errors
    /// Database errors.
    pub async fn revoke_identity(&self, node_id: &str, now_unix_ms: i64) -> Result<bool, ControllerError> {
        let sql = "UPDATE node_identities SET revoked_ms = $1 WHERE node_id = $2 AND revoked_ms IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(now_unix_ms).bind(node_id).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Records the next WireGuard key a node reported during a rotation.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_wg_next_key(&self, node_id: &str, key: &str) -> Result<bool, ControllerError> {
        let sql = "UPDATE node_identities SET wg_next_key = $1 WHERE node_id = $2 AND revoked_ms IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(key).bind(node_id).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Ends a rotation: the next key (`key`) becomes the key.
    ///
    /// # Errors
    /// Database errors.
    pub async fn finish_wg_rotation(&self, node_id: &str, key: &str) -> Result<bool, ControllerError> {
        let sql = "UPDATE node_identities SET wg_public_key = wg_next_key, wg_next_key = NULL \
                   WHERE node_id = $1 AND wg_next_key = $2";
        let n = on_pool!(self, p => sqlx::query(sql).bind(node_id).bind(key).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Whether any admin API token is live (the first start makes one when not).
    ///
    /// # Errors
    /// Database errors.
    pub async fn has_live_admin_token(&self) -> Result<bool, ControllerError> {
        let sql = "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND revoked_ms IS NULL";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?);
        Ok(n > 0)
    }
}

fn addr(a: i64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::try_from(a).unwrap_or(0))
}
