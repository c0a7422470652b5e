//! The controller as one running thing: `Controller::start` builds each
//! component from its config section and starts its tasks on one tracker.
//! It only wires; each component does its own work (docs/architecture.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::api::models::Fetch;
use crate::api::server::{GrpcConfig, Server};
use crate::artifacts::Artifacts;
use crate::clock::Clock;
use crate::config::ControllerConfig;
use crate::dashboard::Dashboard;
use crate::desired::DesiredStates;
use crate::http::{Http, HttpTls};
use crate::inbound::Owners;
use crate::ingest::Ingest;
use crate::jobs::JobManager;
use crate::link::{Link, Verifier};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rollouts::Rollouts;
use crate::security::enroll::Enrollment;
use crate::security::service::NodeFacing;
use crate::security::setup::{Prepared, ServiceParts, Services};
use crate::store::{Store, Upkeep};
use crate::usage::Usage;
use crate::{ControllerError, jobs, link, security};

pub use crate::security::setup::ADMIN_TOKEN_FILE;

/// How long `Controller::start` waits for the broker to confirm the link's subscriptions.
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(5);

/// How a client reaches this controller's API: what `fleet-local` prints and tests use.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// `https://addr` with TLS, else `http://addr`.
    pub url: String,
    /// The CA to trust ("auto" TLS).
    pub ca_pem: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// The first admin token's file (when auth is on).
    pub token_file: Option<std::path::PathBuf>,
}

impl ApiAccess {
    /// A `FleetService` client with the admin token.
    ///
    /// # Errors
    /// The token file unreadable, or the controller unreachable.
    pub async fn admin_client(&self) -> Result<fleet_net::client::FleetClient, ControllerError> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| ControllerError::Io(format!("cannot read the admin token {}: {e}", f.display())))?,
            ),
            None => None,
        };
        let ca = self.ca_pem.as_deref().map(str::as_bytes);
        Ok(fleet_net::client::fleet_client(&self.url, ca, token.as_deref()).await?)
    }
}

/// A started controller: where it listens, and handles tests and
/// `fleet-local` read.
pub struct Controller {
    /// gRPC FleetService address.
    pub grpc_addr: SocketAddr,
    /// HTTP (/metrics, /healthz, the dashboard) address.
    pub http_addr: SocketAddr,
    /// The broker agents should use.
    pub mqtt_url: String,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub store: Store,
    pub jobs: JobManager,
    /// URL, CA and admin token of the API.
    pub api: ApiAccess,
    tasks: TaskTracker,
    /// Its replay marks are saved once more after every task stopped.
    verifier: Arc<Verifier>,
    /// What the API tokens used since the last write is written once more after every task stopped.
    usage: Usage,
}

async fn bind(addr: SocketAddr, what: &'static str, flag: &'static str) -> Result<TcpListener, ControllerError> {
    TcpListener::bind(addr).await.map_err(|e| ControllerError::PortInUse { what, addr, flag, reason: e.to_string() })
}

/// The API's listener, and the plaintext health one where `health_listen` is set.
async fn bind_grpc(cfg: &GrpcConfig) -> Result<(TcpListener, Option<TcpListener>), ControllerError> {
    let api = bind(cfg.listen, "gRPC API", "--grpc-listen").await?;
    let health = match cfg.health_addr()? {
        Some(addr) => Some(bind(addr, "gRPC health (plaintext)", "[grpc] health_listen").await?),
        None => None,
    };
    Ok((api, health))
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, ControllerError> {
    l.local_addr().map_err(|e| ControllerError::Io(e.to_string()))
}

impl Controller {
    /// Opens the store, prepares security, starts the link (and the embedded
    /// broker if no external one is configured), binds every listener and
    /// starts every component. They stop when `shutdown` is cancelled; `wait`
    /// then waits for them.
    ///
    /// # Errors
    /// Bad config, an unreachable database, a port in use.
    pub async fn start(cfg: ControllerConfig, shutdown: CancellationToken) -> Result<Self, ControllerError> {
        cfg.validate().map_err(|e| ControllerError::Config(e.to_string()))?;
        let store = Store::open(&cfg.data_dir, &cfg.database_url, &cfg.storage).await?;
        let artifacts = Artifacts::open(&cfg.data_dir)?;
        // Before any listener: the admin token and TLS files exist, the overlay is up.
        let prepared = security::setup::prepare(&cfg.security, &cfg.wireguard, &cfg.data_dir, &store).await?;
        let (grpc, grpc_health) = bind_grpc(&cfg.grpc).await?;
        let http = bind(cfg.http.listen, "HTTP listener (metrics, dashboard)", "--http-listen").await?;
        let (grpc_addr, http_addr) = (local_addr(&grpc)?, local_addr(&http)?);
        let (tasks, metrics) = (TaskTracker::new(), Arc::new(Metrics::new()));
        let registry = Registry::new(metrics.clone());
        let verifier = Arc::new(Verifier::new(cfg.security.require_enrollment, cfg.security.node_rate_per_s));
        verifier.set(&store.identities().await?);
        verifier.resume(&store.replay_marks().await?);
        let (link, readers, mqtt_url) = link::start(
            &cfg.mqtt,
            &cfg.kafka,
            &verifier,
            cfg.security.require_enrollment,
            &metrics,
            prepared.sealer.clone(),
        )
        .await?;
        let (queue, ingest) = Ingest::new(&cfg.ingest, &store, &registry, &metrics, &link);
        let cloud = jobs::cloud::load(&cfg.cloud).await?;
        let clock = Arc::new(Clock::new(store.clock_high_water().await?));
        let usage = Usage::new(store.clone(), clock.clone(), metrics.clone());
        let parts = (link.clone(), registry.clone(), store.clone(), metrics.clone(), usage.clone());
        let (jobs, job_tasks) = JobManager::new(cfg.jobs.clone(), cfg.router.router(), cloud, parts, &tasks);
        let parts = (&store, &link, &metrics, &clock, &registry);
        let services = security_services(&cfg, &prepared, &mqtt_url, parts, (&tasks, &shutdown));
        let owners = Arc::new(Owners {
            ingest: queue,
            registry: registry.clone(),
            jobs: jobs.clone(),
            rotation: services.rotation.clone(),
            dynsec: services.dynsec.clone(),
            verifier: verifier.clone(),
            metrics: metrics.clone(),
        });

        ingest.spawn_on(&tasks, &shutdown);
        readers.spawn_on(&tasks, &owners, &shutdown);
        wait_subscribed(&link, &mqtt_url).await;
        tasks.spawn(job_tasks.run(shutdown.clone()));
        let (desired, rollouts) = desired_and_rollouts(&tasks, &store, link, &registry, &artifacts, &shutdown);
        tasks.spawn(Upkeep::new(store.clone(), cfg.storage.clone()).run(shutdown.clone()));
        tasks.spawn(security::mark::keep(clock, store.clone(), shutdown.clone()));
        tasks.spawn(usage.clone().run(shutdown.clone()));
        link::verify::spawn_keepers(&tasks, &verifier, &store, services.changes.subscribe(), &shutdown);
        if cfg.wireguard.enabled {
            let (iface, changes) = (cfg.wireguard.interface.clone(), services.changes.subscribe());
            tasks.spawn(security::overlay::keep_in_step(iface, store.clone(), changes, shutdown.clone()));
        }
        let api = Arc::new(Api {
            registry: registry.clone(),
            store: store.clone(),
            shutdown: shutdown.clone(),
            desired,
            jobs: jobs.clone(),
            security: services.security.clone(),
            rotation: services.rotation,
            controller_key: services.controller_key,
            usage: usage.clone(),
            artifacts: artifacts.clone(),
            rollouts,
        });
        let access = api_access(&cfg, &prepared, grpc_addr);
        let http_tls = match (&prepared.tls, cfg.http.tls) {
            (Some(t), HttpTls::Auto) => Some(crate::http::tls::server_config(&t.cert_pem, &t.key_pem.0)?),
            _ => None,
        };
        let transport = crate::http::transport(http_addr, http_tls.is_some());
        let dashboard_url = format!("{}://{http_addr}/", if http_tls.is_some() { "https" } else { "http" });
        let dashboard = Arc::new(Dashboard::new(api.clone(), services.guard.clone(), transport)?);
        let tls = prepared.tls.map(|t| t.config);
        let open = (Enrollment(services.security), Fetch::new(artifacts, &verifier, &metrics));
        let server = Server::new((grpc, grpc_health), tls, api, open, services.guard)?;
        tasks.spawn(server.run(shutdown.clone()));
        tasks.spawn(Http::new(http, http_tls, metrics.clone(), store.clone(), dashboard).run(shutdown.clone()));
        tasks.close();
        tracing::info!(%grpc_addr, dashboard = %dashboard_url, %mqtt_url, store = store.backend(), "Controller started.");
        Ok(Self { grpc_addr, http_addr, mqtt_url, metrics, registry, store, jobs, api: access, tasks, verifier, usage })
    }

    /// Waits for every task to finish (after `shutdown` was cancelled).
    pub async fn wait(&self) {
        self.tasks.wait().await;
        // The readers have stopped: what they took last is saved too.
        if let Err(e) = self.store.save_replay_marks(&self.verifier.marks()).await {
            tracing::warn!(error = %e, "Replay marks not saved at shutdown; after the restart the last second's \
                messages could be taken once more.");
        }
        // The API has stopped and every job has settled: the last counts.
        if let Err(e) = self.usage.flush().await {
            tracing::error!(error = %e, "API usage of the last second not written at shutdown; it is lost.");
        }
    }
}

/// The security services, with what enrolling nodes are told about this controller.
fn security_services(
    cfg: &ControllerConfig,
    prepared: &Prepared,
    mqtt_url: &str,
    (store, link, metrics, clock, registry): (&Store, &Link, &Arc<Metrics>, &Arc<Clock>, &Registry),
    (tasks, shutdown): (&TaskTracker, &CancellationToken),
) -> Services {
    let s = &cfg.security;
    let facing = NodeFacing {
        broker_url: if s.node_broker_url.is_empty() { mqtt_url.to_owned() } else { s.node_broker_url.clone() },
        wg_public_key: prepared.wg_public_key.clone(),
        wg_endpoint: if cfg.wireguard.enabled { cfg.wireguard.endpoint.clone() } else { String::new() },
        sealer: prepared.sealer.clone(),
    };
    let dynsec_admin = cfg.mqtt.dynsec.then(|| cfg.mqtt.username.clone());
    let clock = clock.clone();
    let data_dir = &cfg.data_dir;
    let parts = ServiceParts { cfg: s, store, link, metrics, facing, dynsec_admin, clock, registry, data_dir };
    Services::start(parts, tasks, shutdown)
}

/// Waits until the link is subscribed, so nothing published right after
/// start is missed; an external broker that is down only delays this.
/// Desired states and the rollouts that change them, with their tasks.
fn desired_and_rollouts(
    tasks: &TaskTracker,
    store: &Store,
    link: Link,
    registry: &Registry,
    artifacts: &Artifacts,
    shutdown: &CancellationToken,
) -> (DesiredStates, Rollouts) {
    let desired = DesiredStates::new(store.clone(), link);
    tasks.spawn(desired.clone().run(shutdown.clone()));
    let rollouts = Rollouts::new(store.clone(), registry.clone(), desired.clone(), artifacts.clone());
    tasks.spawn(rollouts.clone().run(shutdown.clone()));
    (desired, rollouts)
}

async fn wait_subscribed(link: &Link, mqtt_url: &str) {
    let mut connected = link.connected();
    let subscribed = tokio::time::timeout(SUBSCRIBED_WAIT, connected.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok());
    if !subscribed {
        tracing::warn!(%mqtt_url, "MQTT broker not reachable yet; the link keeps retrying in the background.");
    }
}

fn api_access(cfg: &ControllerConfig, prepared: &Prepared, grpc_addr: SocketAddr) -> ApiAccess {
    let tls = prepared.tls.as_ref();
    ApiAccess {
        url: format!("{}://{grpc_addr}", if tls.is_some() { "https" } else { "http" }),
        ca_pem: tls.and_then(|t| t.ca_pem.clone()),
        ca_file: tls.and_then(|t| t.ca_pem.as_ref().map(|_| cfg.data_dir.join("tls/ca.pem"))),
        token_file: prepared.admin_token_file.clone(),
    }
}
