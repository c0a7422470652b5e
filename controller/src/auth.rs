//! The pure rules of access control (docs/security.md), with no I/O: secrets
//! that never print, tokens and their hashes, roles, and when a token expires.
//! The store keeps what these describe; `security` acts on them.
//!
//! Tokens are 32 bytes from the operating system's random source, shown once
//! as `<prefix>_<base64url>`; the controller keeps only their SHA-256. They
//! have full entropy, so a slow password hash would buy nothing.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::ControllerError;

/// Prefix of a bootstrap (enrollment) token.
pub const BOOTSTRAP_PREFIX: &str = "fbt";
/// Prefix of an API token.
pub const API_PREFIX: &str = "fat";

/// A secret that must never be logged: `Debug` and `Display` print
/// `<redacted>`; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret read from a user, a file or the network.
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that must send or show it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A new token with `prefix`, and the hash to store.
///
/// # Errors
/// When the operating system's random source fails (then no token is safe).
pub fn new_token(prefix: &str) -> Result<(Secret, String), ControllerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(ControllerError::Random)?;
    let token = format!("{prefix}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&token);
    Ok((Secret(token), hash))
}

/// The stored form of a token: lower-case hex SHA-256 of its text.
#[must_use]
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two hashes in time that does not depend on where they differ.
#[must_use]
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// What an API token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: nodes, telemetry, desired state, jobs, audit.
    Viewer,
    /// Changes: desired state, jobs, bootstrap tokens.
    Operator,
    /// Revokes nodes, rotates keys, manages API tokens.
    Admin,
}

impl Role {
    /// The role's word, as stored and as typed.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role word.
    ///
    /// # Errors
    /// Any other word, with the three that exist.
    pub fn parse(s: &str) -> Result<Self, ControllerError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ControllerError::Invalid(format!("unknown role {other:?}: use viewer, operator or admin"))),
        }
    }
}

/// What an API token may use (docs/security.md, "Usage and quotas"); 0 is
/// unlimited. Days are UTC days; a day's quotas reset at 00:00 UTC, the
/// minute's at the next whole minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Jobs accepted by SubmitJob per day.
    pub jobs_per_day: u64,
    /// Inference time of its jobs (nodes and cloud tier together) per day, in seconds.
    pub inference_s_per_day: u64,
    /// QueryTelemetry calls per minute.
    pub queries_per_minute: u64,
}

/// The largest quota accepted (about 10^12): more is the same as unlimited,
/// and every count stays far from the store's integer limit.
pub const MAX_QUOTA: u64 = 1 << 40;

impl Quota {
    /// Whether any quota is set.
    #[must_use]
    pub fn any(&self) -> bool {
        self.jobs_per_day > 0 || self.inference_s_per_day > 0 || self.queries_per_minute > 0
    }

    /// Checks each value is at most [`MAX_QUOTA`].
    ///
    /// # Errors
    /// The first one above it, named.
    pub fn check(&self) -> Result<(), ControllerError> {
        let named = [
            ("jobs_per_day", self.jobs_per_day),
            ("inference_s_per_day", self.inference_s_per_day),
            ("queries_per_minute", self.queries_per_minute),
        ];
        match named.iter().find(|(_, v)| *v > MAX_QUOTA) {
            Some((name, v)) => Err(ControllerError::Invalid(format!(
                "quota.{name}: {v} is more than {MAX_QUOTA}; give 0 for unlimited"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, ha) = new_token(BOOTSTRAP_PREFIX).unwrap();
        let (b, hb) = new_token(BOOTSTRAP_PREFIX).unwrap();
        assert!(a.expose().starts_with("fbt_") && a.expose().len() == 4 + 43);
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(hash_token(a.expose()), ha);
        assert_eq!(ha.len(), 64);
        // Never printed.
        assert_eq!(format!("{a} {a:?}"), "<redacted> <redacted>");
        assert!(!format!("{:?}", (a.clone(), 1)).contains(a.expose()));
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()).ok(), Some(r));
        }
        assert!(Role::parse("root").unwrap_err().to_string().contains("viewer, operator or admin"));
    }
}
