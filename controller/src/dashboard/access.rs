//! Who is asking, and may they: the login form's token becomes a session
//! cookie (HttpOnly, SameSite=Strict, Secure under TLS); each request's
//! session is looked up, its API token checked again through the gRPC guard
//! (revoked tokens end their sessions; the same rate limit), its role held to
//! the `FleetService` method it stands for; a change must come from this
//! origin and echo the session's CSRF token. Logins and logouts are audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::json;
use tonic::Status;

use super::reply::{ApiError, Reply};
use super::session::{SESSION_TTL, csrf_of, csrf_ok};
use super::{Dashboard, Transport};
use crate::auth::hash_token;
use crate::security::guard::Caller;

/// The session cookie's name.
pub const COOKIE: &str = "fleet_session";
/// The header a change carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// What the browser may load and run: this origin only, no inline script or style.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v).filter_map(Result::ok))
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

impl Dashboard {
    fn refused(&self) -> Result<(), ApiError> {
        match &self.transport {
            Transport::Refused(why) => Err(ApiError::new(StatusCode::FORBIDDEN, why.clone())),
            _ => Ok(()),
        }
    }

    /// The caller of a request, and its session cookie (none with API tokens off).
    async fn who(&self, headers: &HeaderMap) -> Result<(Caller, Option<String>), ApiError> {
        self.refused()?;
        if !self.guard.enabled() {
            return Ok((self.guard.caller("").await?, None));
        }
        let unknown = || ApiError::new(StatusCode::UNAUTHORIZED, "not logged in: log in with an API token");
        let cookie = cookie_value(headers).ok_or_else(unknown)?;
        let now = fleet_proto::now_unix_ms();
        let session = self.sessions.get(&cookie, now).await.map_err(Status::from)?.ok_or_else(unknown)?;
        match self.guard.caller(&session.token_hash).await {
            Ok(c) => Ok((c, Some(cookie))),
            Err(s) => {
                if s.code() == tonic::Code::Unauthenticated {
                    // Revoked: its sessions end here too (best effort; the check above holds anyway).
                    let _ = self.sessions.end_token(&session.token_hash).await;
                }
                Err(s.into())
            }
        }
    }

    /// A read standing for `method`: the caller, when its role allows it.
    pub(super) async fn reader(&self, headers: &HeaderMap, method: &str) -> Result<Caller, ApiError> {
        let (caller, _) = self.who(headers).await?;
        self.guard.permit(&caller, method).await?;
        Ok(caller)
    }

    /// A change standing for `method`: from this origin, with the session's
    /// CSRF token, by a role that may call `method` (a refusal is audited).
    pub(super) async fn changer(&self, headers: &HeaderMap, method: &str) -> Result<Caller, ApiError> {
        same_origin(headers)?;
        let (caller, cookie) = self.who(headers).await?;
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let ok = match &cookie {
            Some(c) => csrf_ok(c, sent),
            None => crate::auth::same_secret(sent, self.open_csrf.expose()),
        };
        if !ok {
            let status = Status::permission_denied("missing or wrong CSRF token: reload the dashboard");
            self.api.security.audit.record(&caller.name, method, "dashboard", Some(&status)).await;
            return Err(status.into());
        }
        self.guard.permit(&caller, method).await?;
        Ok(caller)
    }
}

/// Refuses a change sent from another site: `Sec-Fetch-Site` (sent by every
/// current browser) must say so, and an `Origin` must name this host.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("a change from another site ({site}) is refused")));
    }
    if let (Some(origin), Some(host)) = (text("origin"), text("host")) {
        let bare = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if bare != host {
            return Err(ApiError::new(StatusCode::FORBIDDEN, format!("a change from {origin} is refused")));
        }
    }
    Ok(())
}

/// `GET /api/session`: who is logged in, their CSRF token, and how the
/// dashboard is served (what the page says about it).
pub async fn session(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Reply {
    let transport = match &d.transport {
        Transport::Tls => json!({"tls": true}),
        Transport::LoopbackPlain => json!({"tls": false, "notice":
            "plain HTTP on loopback: for a demo on this machine only; serve the dashboard with TLS \
             (security.tls) anywhere else"}),
        Transport::Refused(why) => json!({"tls": false, "refused": why}),
    };
    let who = match d.who(&headers).await {
        Ok((c, cookie)) => {
            let csrf = cookie.map_or_else(|| d.open_csrf.expose().to_owned(), |c| csrf_of(&c).expose().to_owned());
            json!({"name": c.name, "role": c.role.as_str(), "csrf": csrf})
        }
        // Not logged in, or refused on this transport (the page shows why).
        Err(e) if matches!(e.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => serde_json::Value::Null,
        Err(e) => return Err(e),
    };
    Ok(Json(json!({"auth": d.guard.enabled(), "transport": transport, "who": who})))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /api/login` `{"token": "fat_..."}`: a session cookie and the CSRF token.
pub async fn login(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Json(form): Json<LoginForm>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    d.refused()?;
    let hash = hash_token(form.token.trim());
    // A wrong token is counted (fleet_api_rejected_total), not audited: anyone can send one.
    let caller = d.guard.caller(&hash).await?;
    let login = d.sessions.login(&hash, fleet_proto::now_unix_ms()).await.map_err(Status::from)?;
    d.api.security.audit.record(&caller.name, "DashboardLogin", "dashboard", None).await;
    let cookie = Cookie::build((COOKIE, login.cookie.expose().to_owned()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(d.transport == Transport::Tls)
        .path("/")
        .max_age(cookie::time::Duration::seconds(i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX)))
        .build();
    let body = json!({"name": caller.name, "role": caller.role.as_str(), "csrf": login.csrf.expose()});
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `POST /api/logout`: ends the session and clears the cookie.
pub async fn logout(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = d.changer(&headers, "ListNodes").await?;
    if let Some(c) = cookie_value(&headers) {
        d.sessions.logout(&c).await.map_err(Status::from)?;
    }
    d.api.security.audit.record(&caller.name, "DashboardLogout", "dashboard", None).await;
    let gone = Cookie::build((COOKIE, "")).path("/").max_age(cookie::time::Duration::ZERO).build();
    let mut resp = Json(json!({})).into_response();
    if let Ok(v) = HeaderValue::from_str(&gone.to_string()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Headers on every answer of the HTTP listener: the CSP, no sniffing, no
/// framing, no referrer, and HSTS under TLS.
pub fn harden(tls: bool, headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; fleet_session=fds_abc; b=2"));
        assert_eq!(cookie_value(&h).as_deref(), Some("fds_abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("other=fleet_session"));
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn changes_from_another_site_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert_eq!(same_origin(&h).unwrap_err().status, StatusCode::FORBIDDEN);
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(same_origin(&h).unwrap_err().status, StatusCode::FORBIDDEN);
        // A client that is no browser sends neither.
        assert!(same_origin(&HeaderMap::new()).is_ok());
    }
}
