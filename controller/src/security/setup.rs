//! Security at start: what must exist before any listener opens (the first
//! admin token, the TLS files, the WireGuard overlay), then the services the
//! API and the link use (audit, token guard, access-control calls, key
//! rotations of the nodes and of the controller, Mosquitto's dynamic security).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::audit::Auditor;
use super::controller_key::ControllerKey;
use super::dynsec::Dynsec;
use super::guard::Guard;
use super::overlay::WireGuardConfig;
use super::rotate::Rotation;
use super::service::{NodeFacing, Security};
use super::tls::ServerTls;
use super::{SecurityConfig, enroll, overlay, tls};
use crate::ControllerError;
use crate::link::Link;
use crate::link::seal::Sealer;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

/// The first admin API token's file in the data directory (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Node changes (enrollments, revocations, rotations) buffered per listener.
const CHANGES: usize = 1024;

/// What exists once security is prepared.
pub struct Prepared {
    /// The gRPC server's TLS, unless `tls = "off"`.
    pub tls: Option<ServerTls>,
    /// The controller's WireGuard public key (base64); empty without the overlay.
    pub wg_public_key: String,
    /// The first admin token's file, when API tokens are required.
    pub admin_token_file: Option<PathBuf>,
    /// The controller's signing key, for everything it sends nodes.
    pub sealer: Arc<Sealer>,
}

fn create_dir(dir: &Path) -> Result<(), ControllerError> {
    fleet_durable::create_dir(dir).map_err(|e| ControllerError::Io(format!("cannot create {}: {e}", dir.display())))
}

/// Makes the first admin token and the TLS files, and brings the overlay up
/// (the broker and gRPC may then bind to its address).
///
/// # Errors
/// Files that cannot be written or read, or an interface that cannot be configured.
pub async fn prepare(
    cfg: &SecurityConfig,
    wg: &WireGuardConfig,
    data_dir: &Path,
    store: &Store,
) -> Result<Prepared, ControllerError> {
    let admin_token_file = if cfg.api_auth {
        create_dir(data_dir)?;
        let file = data_dir.join(ADMIN_TOKEN_FILE);
        enroll::first_admin_token(store, &file).await?;
        Some(file)
    } else {
        None
    };
    let tls = tls::server_tls(cfg, data_dir)?;
    if let Some(t) = &tls {
        tracing::info!(fingerprint = %t.fingerprint, "gRPC TLS on; clients check the CA's SHA-256 fingerprint.");
    }
    let wg_public_key = if wg.enabled {
        create_dir(data_dir)?;
        let key = overlay::load_or_make_key(data_dir)?;
        let net = cfg.overlay().map_err(|e| ControllerError::Config(e.to_string()))?;
        overlay::start(wg, &key, net, store).await?;
        key.get_public().to_base64()
    } else {
        String::new()
    };
    create_dir(data_dir)?;
    let sealer = Arc::new(Sealer::new(super::signing_key::load_or_make(data_dir)?));
    Ok(Prepared { tls, wg_public_key, admin_token_file, sealer })
}

/// The running security services.
pub struct Services {
    /// The access-control calls and enrollment.
    pub security: Arc<Security>,
    /// Checks every `FleetService` call's token and role.
    pub guard: Arc<Guard>,
    pub rotation: Arc<Rotation>,
    /// Rotations of the controller's own signing key.
    pub controller_key: Arc<ControllerKey>,
    pub dynsec: Option<Dynsec>,
    /// Each node enrolled, revoked or rotating: the signature keys and the
    /// WireGuard peers follow it.
    pub changes: broadcast::Sender<String>,
}

/// What the services are started with.
pub struct ServiceParts<'a> {
    pub cfg: &'a SecurityConfig,
    pub store: &'a Store,
    pub link: &'a Link,
    pub metrics: &'a Arc<Metrics>,
    /// What enrolling nodes are told about this controller.
    pub facing: NodeFacing,
    /// Mosquitto's dynamic security is driven, logged in as this admin.
    pub dynsec_admin: Option<String>,
    /// The time token expiry is judged at.
    pub clock: Arc<crate::clock::Clock>,
    /// Which nodes hold which controller key (their status says).
    pub registry: &'a Registry,
    /// Where the controller's key files are.
    pub data_dir: &'a Path,
}

impl Services {
    /// Starts the audit writer on `tasks` and builds the services.
    #[must_use]
    pub fn start(p: ServiceParts<'_>, tasks: &TaskTracker, shutdown: &CancellationToken) -> Self {
        let changes = broadcast::channel::<String>(CHANGES).0;
        let dynsec = p.dynsec_admin.map(|admin| Dynsec::new(p.link.clone(), admin));
        let rotation = Arc::new(Rotation { store: p.store.clone(), link: p.link.clone(), changes: changes.clone() });
        let audit = Auditor::start(p.store.clone(), tasks, shutdown.clone());
        let controller_key = Arc::new(ControllerKey::new(
            p.data_dir.to_owned(),
            p.facing.sealer.clone(),
            p.link.clone(),
            p.store.clone(),
            p.registry.clone(),
        ));
        tasks.spawn(controller_key.clone().run(shutdown.clone()));
        let guard = Arc::new(Guard::new(
            p.store.clone(),
            audit.clone(),
            p.cfg.api_auth,
            p.cfg.api_rate_per_s,
            p.metrics.clone(),
        ));
        let security = Arc::new(Security {
            store: p.store.clone(),
            guard: guard.clone(),
            audit,
            cfg: p.cfg.clone(),
            facing: p.facing,
            clock: p.clock,
            on_change: changes.clone(),
            dynsec: dynsec.clone(),
        });
        Self { security, guard, rotation, controller_key, dynsec, changes }
    }
}
