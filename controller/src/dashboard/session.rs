//! The dashboard's sessions: a login with an API token gets a random session
//! id (the cookie); the store keeps only its hash, with the API token's hash
//! and when it expires, so every replica knows it and a restart logs no one
//! out. Each request's lookup is cached briefly ([`CACHE_TTL`]). The CSRF
//! token is derived from the cookie (a hash the page can read only through
//! `/api/session`, the cookie itself being HttpOnly), so it needs no storage.
//! At most [`MAX_SESSIONS`] live at once, each for [`SESSION_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::ControllerError;
use crate::auth::{Secret, hash_token, new_token, same_secret};
use crate::store::Store;

/// Sessions kept at most; a login beyond them (none expired) is refused.
pub const MAX_SESSIONS: u64 = 10_000;
/// How long a session lasts from its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a lookup is believed: a logout on another replica takes effect within this.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Lookups cached at most (forgotten all at once when full).
const CACHE_MAX: usize = 10_000;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The API token's hash (its name and role are looked up on each request).
    pub token_hash: String,
    pub expires_unix_ms: i64,
}

/// What a login hands the browser: the cookie's value and the CSRF token.
#[derive(Debug)]
pub struct Login {
    pub cookie: Secret,
    pub csrf: Secret,
}

/// The CSRF token of the session whose cookie is `cookie`.
#[must_use]
pub fn csrf_of(cookie: &str) -> Secret {
    let d = Sha256::new().chain_update(b"spark-fleet dashboard csrf\0").chain_update(cookie.as_bytes()).finalize();
    Secret::new(format!("fdc_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)))
}

/// Whether `sent` is the CSRF token of the session of `cookie`.
#[must_use]
pub fn csrf_ok(cookie: &str, sent: &str) -> bool {
    same_secret(sent, csrf_of(cookie).expose())
}

type Cached = (Option<Session>, Instant);

/// The sessions, through the store.
pub struct Sessions {
    store: Store,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Sessions {
    #[must_use]
    pub fn new(store: Store) -> Self {
        Self { store, cache: Mutex::default() }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for the API token `token_hash`.
    ///
    /// # Errors
    /// `Invalid` when [`MAX_SESSIONS`] live sessions exist; `Random` when no
    /// secret can be made; database errors.
    pub async fn login(&self, token_hash: &str, now_ms: i64) -> Result<Login, ControllerError> {
        let (cookie, id_hash) = new_token("fds")?;
        self.store.sweep_sessions(now_ms).await?;
        if self.store.live_sessions(now_ms).await? >= MAX_SESSIONS {
            return Err(ControllerError::Invalid(format!(
                "{MAX_SESSIONS} dashboard sessions are open, the most this controller keeps: log out elsewhere or \
                 wait for them to expire"
            )));
        }
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        self.store.add_session(&id_hash, token_hash, now_ms.saturating_add(ttl)).await?;
        let csrf = csrf_of(cookie.expose());
        Ok(Login { cookie, csrf })
    }

    /// The live session of the cookie `cookie` at `now_ms`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, cookie: &str, now_ms: i64) -> Result<Option<Session>, ControllerError> {
        let hash = hash_token(cookie);
        let cached = self.cache().get(&hash).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(s, _)| s.clone());
        let found = match cached {
            Some(s) => s,
            None => {
                let s = self
                    .store
                    .session(&hash)
                    .await?
                    .map(|(token_hash, expires_unix_ms)| Session { token_hash, expires_unix_ms });
                let mut cache = self.cache();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, (s.clone(), Instant::now()));
                s
            }
        };
        Ok(found.filter(|s| s.expires_unix_ms > now_ms))
    }

    /// Ends the session of `cookie` (logout).
    ///
    /// # Errors
    /// Database errors.
    pub async fn logout(&self, cookie: &str) -> Result<(), ControllerError> {
        let hash = hash_token(cookie);
        self.cache().remove(&hash);
        self.store.end_session(&hash).await
    }

    /// Ends every session of the API token `token_hash` (it was revoked).
    ///
    /// # Errors
    /// Database errors.
    pub async fn end_token(&self, token_hash: &str) -> Result<(), ControllerError> {
        self.cache().retain(|_, (s, _)| s.as_ref().is_none_or(|s| s.token_hash != token_hash));
        self.store.end_sessions_of(token_hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sessions() -> (Sessions, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Sessions::new(Store::open_sqlite(dir.path()).await.unwrap()), dir)
    }

    const H: i64 = 3_600_000;

    #[tokio::test]
    async fn a_session_is_found_by_its_cookie_only_until_it_expires() {
        let (s, _dir) = sessions().await;
        let login = s.login("h1", 0).await.unwrap();
        let got = s.get(login.cookie.expose(), 1).await.unwrap().unwrap();
        assert_eq!(got.token_hash, "h1");
        assert!(csrf_ok(login.cookie.expose(), login.csrf.expose()));
        assert!(!csrf_ok(login.cookie.expose(), login.cookie.expose()), "the cookie is not the CSRF token");
        assert!(s.get("fds_forged", 1).await.unwrap().is_none());
        assert!(s.get(login.cookie.expose(), 12 * H + 1).await.unwrap().is_none(), "expired");
    }

    #[tokio::test]
    async fn another_replica_sees_the_session_and_logout_and_revocation_end_it() {
        let (s, _dir) = sessions().await;
        let other = Sessions::new(s.store.clone());
        let a = s.login("ha", 0).await.unwrap();
        let a2 = s.login("ha", 0).await.unwrap();
        let b = s.login("hb", 0).await.unwrap();
        assert!(other.get(a.cookie.expose(), 1).await.unwrap().is_some(), "shared by replicas");
        s.logout(a.cookie.expose()).await.unwrap();
        assert!(s.get(a.cookie.expose(), 1).await.unwrap().is_none());
        s.end_token("ha").await.unwrap();
        assert!(s.get(a2.cookie.expose(), 1).await.unwrap().is_none());
        assert!(s.get(b.cookie.expose(), 1).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn expired_sessions_are_swept_at_login() {
        let (s, _dir) = sessions().await;
        s.login("ha", 0).await.unwrap();
        s.login("hb", 6 * H).await.unwrap();
        assert_eq!(s.store.live_sessions(6 * H).await.unwrap(), 2);
        s.login("hc", 12 * H + 1).await.unwrap();
        assert_eq!(s.store.live_sessions(12 * H + 1).await.unwrap(), 2, "the first expired");
    }
}
