//! The dashboard's sessions: a login with an API token gets a random session
//! id (the cookie; only its hash is kept) and a CSRF token every mutating
//! request must echo (kept, so a reloaded page gets it again). Sessions live in memory, at most [`MAX_SESSIONS`],
//! each for [`SESSION_TTL`]; they keep the API token's hash, not the token,
//! so each request can check the token is still valid (a revoke ends its
//! sessions).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ControllerError;
use crate::auth::{Role, Secret, hash_token, new_token, same_secret};

/// Sessions kept at most; a login beyond them (none expired) is refused.
pub const MAX_SESSIONS: usize = 10_000;
/// How long a session lasts from its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The API token's name and hash (looked up again on each request).
    pub token_name: String,
    pub token_hash: String,
    pub role: Role,
    /// The CSRF token handed to the page (again after a reload).
    pub csrf: Secret,
    expires: Instant,
}

/// What a login hands the browser: the cookie's value and the CSRF token.
#[derive(Debug)]
pub struct Login {
    pub cookie: Secret,
    pub csrf: Secret,
}

/// The sessions of one controller.
#[derive(Debug)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
    max: usize,
    ttl: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, SESSION_TTL)
    }
}

impl Sessions {
    #[must_use]
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self { by_hash: Mutex::default(), max, ttl }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for the API token `token_name` (hash `token_hash`) with `role`.
    ///
    /// # Errors
    /// `Invalid` when [`MAX_SESSIONS`] live sessions exist; `Random` when no
    /// secret can be made.
    pub fn login(
        &self,
        token_name: &str,
        token_hash: &str,
        role: Role,
        now: Instant,
    ) -> Result<Login, ControllerError> {
        let (cookie, id_hash) = new_token("fds")?;
        let (csrf, _) = new_token("fdc")?;
        let mut map = self.map();
        if map.len() >= self.max {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= self.max {
            return Err(ControllerError::Invalid(format!(
                "{} dashboard sessions are open, the most this controller keeps: log out elsewhere or wait \
                 for them to expire",
                self.max
            )));
        }
        let session = Session {
            token_name: token_name.to_owned(),
            token_hash: token_hash.to_owned(),
            role,
            csrf: csrf.clone(),
            expires: now + self.ttl,
        };
        map.insert(id_hash, session);
        Ok(Login { cookie, csrf })
    }

    /// The live session of the cookie `cookie`.
    #[must_use]
    pub fn get(&self, cookie: &str, now: Instant) -> Option<Session> {
        let hash = hash_token(cookie);
        let mut map = self.map();
        match map.get(&hash) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Whether `csrf` is the CSRF token of `session`.
    #[must_use]
    pub fn csrf_ok(session: &Session, csrf: &str) -> bool {
        same_secret(csrf, session.csrf.expose())
    }

    /// Ends the session of `cookie` (logout).
    pub fn logout(&self, cookie: &str) {
        self.map().remove(&hash_token(cookie));
    }

    /// Ends every session of the API token `token_hash` (it was revoked).
    pub fn end_token(&self, token_hash: &str) {
        self.map().retain(|_, s| s.token_hash != token_hash);
    }

    /// Live sessions (expired ones not yet swept count too).
    #[must_use]
    pub fn len(&self) -> usize {
        self.map().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_expires() {
        let s = Sessions::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let login = s.login("ops", "h1", Role::Operator, t0).unwrap();
        let got = s.get(login.cookie.expose(), t0).unwrap();
        assert_eq!((got.token_name.as_str(), got.role), ("ops", Role::Operator));
        assert!(Sessions::csrf_ok(&got, login.csrf.expose()));
        assert!(!Sessions::csrf_ok(&got, login.cookie.expose()), "the cookie is not the CSRF token");
        assert!(s.get("fds_forged", t0).is_none());
        assert!(s.get(login.cookie.expose(), t0 + Duration::from_secs(61)).is_none(), "expired");
        assert!(s.is_empty(), "an expired session is dropped when met");
    }

    #[test]
    fn logout_and_revocation_end_sessions() {
        let s = Sessions::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = s.login("a", "ha", Role::Viewer, t0).unwrap();
        let a2 = s.login("a", "ha", Role::Viewer, t0).unwrap();
        let b = s.login("b", "hb", Role::Admin, t0).unwrap();
        s.logout(a.cookie.expose());
        assert!(s.get(a.cookie.expose(), t0).is_none());
        assert!(s.get(a2.cookie.expose(), t0).is_some());
        s.end_token("ha");
        assert!(s.get(a2.cookie.expose(), t0).is_none());
        assert!(s.get(b.cookie.expose(), t0).is_some());
    }

    #[test]
    fn sessions_are_bounded_and_expired_ones_make_room() {
        let s = Sessions::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        s.login("a", "ha", Role::Viewer, t0).unwrap();
        s.login("b", "hb", Role::Viewer, t0 + Duration::from_secs(30)).unwrap();
        let full = s.login("c", "hc", Role::Viewer, t0 + Duration::from_secs(31)).unwrap_err();
        assert!(full.to_string().contains("log out elsewhere"), "{full}");
        // The first expires at 60 s: room for one more.
        s.login("c", "hc", Role::Viewer, t0 + Duration::from_secs(61)).unwrap();
        assert_eq!(s.len(), 2);
    }
}
