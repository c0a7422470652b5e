//! The operator dashboard, served by the HTTP listener at `/`: a page made of
//! embedded assets (`assets`), a JSON API over the same `FleetService` calls
//! gRPC clients make, with the same tokens, roles and audit (`views` reads,
//! `actions` changes, `access` logs in and checks each request), the fleet
//! table paged on the server (`fleet`) and live updates by server-sent events
//! (`live`). docs/dashboard.md describes it.

mod access;
pub use access::harden;
mod actions;
pub mod assets;
pub mod fleet;
mod live;
pub mod reply;
pub mod session;
mod views;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use axum::Router;
use axum::routing::{get, post};

use crate::api::Api;
use crate::auth::Secret;
use crate::security::guard::{Caller, Guard};
use session::Sessions;

/// How the dashboard is reached, said on its screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with the controller's certificate.
    Tls,
    /// Plain HTTP on a loopback address (the demo): said on screen.
    LoopbackPlain,
    /// Plain HTTP on another address: the dashboard refuses to log anyone in
    /// (session cookies would cross the network in the clear).
    Refused(String),
}

/// Everything the dashboard's handlers share.
pub struct Dashboard {
    api: Arc<Api>,
    guard: Arc<Guard>,
    sessions: Sessions,
    transport: Transport,
    /// The CSRF token of every page when API tokens are off (`security.api_auth = false`).
    open_csrf: Secret,
    /// Live streams open now (at most [`live::MAX_STREAMS`]).
    streams: Arc<AtomicUsize>,
}

impl Dashboard {
    /// The dashboard over `api`, checking callers with `guard`.
    ///
    /// # Errors
    /// When the operating system's random source fails.
    pub fn new(api: Arc<Api>, guard: Arc<Guard>, transport: Transport) -> Result<Self, crate::ControllerError> {
        let (open_csrf, _) = crate::auth::new_token("fdc")?;
        if let Transport::Refused(why) = &transport {
            tracing::warn!(reason = %why, "The dashboard will not log anyone in.");
        }
        let sessions = Sessions::new(api.store.clone());
        Ok(Self { api, guard, sessions, transport, open_csrf, streams: Arc::default() })
    }
}

/// A `FleetService` call made for `caller` (the guard's extension, as over gRPC).
fn call<T>(msg: T, caller: &Caller) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(caller.clone());
    req
}

/// The dashboard's routes: the page, its assets and its JSON API.
pub fn routes(d: Arc<Dashboard>) -> Router {
    let api = Router::new()
        .route("/session", get(access::session))
        .route("/login", post(access::login))
        .route("/logout", post(access::logout))
        .route("/fleet", get(views::fleet))
        .route("/nodes/{id}", get(views::node))
        .route("/nodes/{id}/telemetry", get(views::telemetry))
        .route("/nodes/{id}/policy", post(actions::set_policy))
        .route("/nodes/{id}/revoke", post(actions::revoke_node))
        .route("/nodes/{id}/rotate-key", post(actions::rotate_key))
        .route("/jobs", get(views::jobs).post(actions::submit_job))
        .route("/security", get(views::security))
        .route("/audit", get(views::audit))
        .route("/api-tokens", post(actions::create_api_token))
        .route("/api-tokens/{name}/revoke", post(actions::revoke_api_token))
        .route("/bootstrap-tokens", post(actions::create_bootstrap_token))
        .route("/bootstrap-tokens/{id}/revoke", post(actions::revoke_bootstrap_token))
        .route("/live", get(live::stream))
        .with_state(d);
    Router::new().nest("/api", api).merge(assets::routes())
}
