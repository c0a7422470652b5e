//! Who may call what on `FleetService`: the bearer API token of each call is
//! looked up (by hash, cached briefly), its role compared with the one the
//! method needs, and its rate limited. Denied changes are audited too.
//! Health, reflection and `Enroll` are not behind this guard.

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::body::Body;

use super::audit::Auditor;
use crate::auth::{Quota, Role, hash_token};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::usage::ApiToken;

/// How long a token lookup is believed: a revoke on another replica takes
/// effect within this; on this one at once.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Lookups cached at most (forgotten all at once when full).
const CACHE_MAX: usize = 10_000;

/// Who made a call; put into the request's extensions for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API token's name (`anonymous` with `api_auth = false`).
    pub name: String,
    pub role: Role,
    /// The token's quotas, checked by the calls they limit (`crate::usage`).
    pub quota: Quota,
}

/// The role a `FleetService` method needs (unknown methods: admin).
#[must_use]
pub fn required_role(method: &str) -> Role {
    match method {
        "ListNodes" | "GetNode" | "WatchNodes" | "QueryTelemetry" | "GetDesiredState" | "GetJob" | "ListJobs"
        | "ListAuditLog" | "ListModels" | "GetRollout" | "ListRollouts" => Role::Viewer,
        "SetDesiredState"
        | "SubmitJob"
        | "CreateBootstrapToken"
        | "ListBootstrapTokens"
        | "RevokeBootstrapToken"
        | "PushModel"
        | "CreateRollout"
        | "PauseRollout"
        | "ResumeRollout"
        | "AbortRollout" => Role::Operator,
        _ => Role::Admin,
    }
}

/// Whether a method changes anything (and so is audited).
#[must_use]
pub fn mutating(method: &str) -> bool {
    !matches!(required_role(method), Role::Viewer) && !matches!(method, "ListBootstrapTokens" | "GetUsage")
}

type Lookup = Option<ApiToken>;

/// The checks, shared by every connection.
pub struct Guard {
    store: Store,
    audit: Auditor,
    enabled: bool,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<String, (Lookup, Instant)>>,
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl Guard {
    /// A guard; `enabled = false` lets every call through as admin `anonymous`.
    #[must_use]
    pub fn new(store: Store, audit: Auditor, enabled: bool, rate_per_s: u32, metrics: Arc<Metrics>) -> Self {
        let rate = NonZeroU32::new(rate_per_s).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        Self {
            store,
            audit,
            enabled,
            metrics,
            cache: Mutex::new(HashMap::new()),
            limiter: governor::RateLimiter::keyed(quota),
        }
    }

    /// Forgets cached lookups (after a token was revoked or its quota changed here).
    pub fn forget(&self) {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn reject(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.api_rejected.get_or_create(&crate::metrics::ReasonLabel { reason }).inc();
        status
    }

    async fn lookup(&self, hash: &str) -> Result<Lookup, Status> {
        if let Some((v, at)) = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(v.clone());
        }
        let v = self.store.api_token(hash).await.map_err(Status::from)?;
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash.to_owned(), (v.clone(), Instant::now()));
        Ok(v)
    }

    /// Checks one call to `path` (`/fleet.v1.FleetService/Method`).
    ///
    /// # Errors
    /// UNAUTHENTICATED (no or unknown token), PERMISSION_DENIED (role too
    /// low, naming the role needed), RESOURCE_EXHAUSTED (rate limit).
    pub async fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let method = path.rsplit('/').next().unwrap_or_default();
        if !self.enabled {
            return Ok(anonymous());
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(self.reject(
                "unauthenticated",
                Status::unauthenticated(
                    "this call needs an API token: send `authorization: Bearer <token>` (fleetctl: --token-file or \
                     FLEET_TOKEN; the first admin token is <data_dir>/admin.token on the controller)",
                ),
            ));
        };
        let caller = self.caller(&hash_token(token)).await?;
        self.permit(&caller, method).await?;
        Ok(caller)
    }

    /// Whether API tokens are checked at all (`security.api_auth`).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who holds the API token whose hash is `hash`, within its rate limit
    /// (the dashboard's sessions keep the hash, not the token).
    ///
    /// # Errors
    /// UNAUTHENTICATED (unknown or revoked), RESOURCE_EXHAUSTED (rate limit).
    pub async fn caller(&self, hash: &str) -> Result<Caller, Status> {
        if !self.enabled {
            return Ok(anonymous());
        }
        let Some(ApiToken { name, role, quota, .. }) = self.lookup(hash).await? else {
            return Err(self.reject(
                "unauthenticated",
                Status::unauthenticated(
                    "unknown or revoked API token: ask an admin for one (fleetctl api-tokens create)",
                ),
            ));
        };
        if self.limiter.check_key(&name).is_err() {
            return Err(self.reject(
                "rate_limited",
                Status::resource_exhausted(format!(
                    "API token {name:?} is over its rate limit (security.api_rate_per_s); slow down and retry"
                )),
            ));
        }
        Ok(Caller { name, role, quota })
    }

    /// Whether `caller` may call `method`; a denied change is audited.
    ///
    /// # Errors
    /// PERMISSION_DENIED naming the role needed.
    pub async fn permit(&self, caller: &Caller, method: &str) -> Result<(), Status> {
        let needed = required_role(method);
        if caller.role >= needed {
            return Ok(());
        }
        let status = Status::permission_denied(format!(
            "{method} needs the {} role; token {:?} has {}",
            needed.as_str(),
            caller.name,
            caller.role.as_str()
        ));
        if mutating(method) {
            self.audit.record(&caller.name, method, "", Some(&status)).await;
        }
        Err(self.reject("permission_denied", status))
    }
}

/// Everyone, with `api_auth = false`.
fn anonymous() -> Caller {
    Caller { name: "anonymous".into(), role: Role::Admin, quota: Quota::default() }
}

/// `FleetService` behind the [`Guard`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, guard: Arc<Guard>) -> Self {
        Self { inner, guard }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Guarded<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            match guard.check(req.uri().path(), req.headers()).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_methods() {
        assert_eq!(required_role("ListNodes"), Role::Viewer);
        assert_eq!(required_role("ListAuditLog"), Role::Viewer);
        assert_eq!(required_role("SetDesiredState"), Role::Operator);
        assert_eq!(required_role("SubmitJob"), Role::Operator);
        assert_eq!(required_role("CreateBootstrapToken"), Role::Operator);
        assert_eq!(required_role("RevokeNode"), Role::Admin);
        assert_eq!(required_role("RotateNodeKey"), Role::Admin);
        assert_eq!(required_role("CreateApiToken"), Role::Admin);
        // A method added later without a rule needs the highest role.
        assert_eq!(required_role("SomethingNew"), Role::Admin);
        assert!(mutating("SetDesiredState") && mutating("RevokeNode") && !mutating("ListNodes"));
        assert!(!mutating("ListBootstrapTokens"));
        assert_eq!(required_role("GetUsage"), Role::Admin);
        assert_eq!(required_role("SetTokenQuota"), Role::Admin);
        assert!(mutating("SetTokenQuota") && !mutating("GetUsage"));
    }
}
