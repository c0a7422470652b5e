//! The controller as one running thing: `Controller::start` opens the store,
//! brings up security and the link, and starts every component's task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ControllerConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::{ControllerError, api, auth, desired, http, ingest, jobs, link, security, store};

/// The first admin API token's file in the data directory (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

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
    pub async fn admin_client(&self) -> Result<fleet_net::client::FleetClient, String> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f).map_err(|e| format!("cannot read the admin token {}: {e}", f.display()))?,
            ),
            None => None,
        };
        fleet_net::client::fleet_client(&self.url, self.ca_pem.as_deref().map(str::as_bytes), token.as_deref()).await
    }
}

/// How long `Controller::start` waits for the broker to confirm ingest's subscriptions.
const INGEST_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A started controller: where it listens, and handles tests and
/// `fleet-local` read.
pub struct Controller {
    /// gRPC FleetService address.
    pub grpc_addr: SocketAddr,
    /// HTTP (/metrics, /healthz) address.
    pub http_addr: SocketAddr,
    /// The broker agents should use.
    pub mqtt_url: String,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub store: Store,
    pub jobs: jobs::JobManager,
    /// URL, CA and admin token of the API.
    pub api: ApiAccess,
    tasks: TaskTracker,
}

async fn bind(addr: SocketAddr, what: &'static str, flag: &'static str) -> Result<TcpListener, ControllerError> {
    TcpListener::bind(addr).await.map_err(|e| ControllerError::PortInUse { what, addr, flag, reason: e.to_string() })
}

impl Controller {
    /// Opens the store, starts the embedded broker if no external one is
    /// configured, binds every listener and starts the tasks. They stop when
    /// `shutdown` is cancelled; `wait` then waits for them.
    ///
    /// # Errors
    /// Bad config, an unreachable database, a port in use.
    pub async fn start(cfg: ControllerConfig, shutdown: CancellationToken) -> Result<Self, ControllerError> {
        cfg.validate().map_err(ControllerError::Config)?;
        let store = if cfg.database_url.is_empty() {
            Store::open_sqlite(&cfg.data_dir).await?
        } else {
            Store::open_postgres(&cfg.database_url, &cfg.storage).await?
        };
        // The admin token and the TLS files exist before the API port opens.
        let admin_token_file = cfg.data_dir.join(ADMIN_TOKEN_FILE);
        if cfg.security.api_auth {
            std::fs::create_dir_all(&cfg.data_dir)
                .map_err(|e| ControllerError::Io(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
            security::enroll::first_admin_token(&store, &admin_token_file).await?;
        }
        let tls = security::tls::server_tls(&cfg.security, &cfg.data_dir)?;
        if let Some(t) = &tls {
            tracing::info!(fingerprint = %t.fingerprint, "gRPC TLS on; clients check the CA's SHA-256 fingerprint.");
        }
        // The overlay first: the broker and gRPC may be bound to its address.
        let wg_public_key = if cfg.wireguard.enabled {
            std::fs::create_dir_all(&cfg.data_dir)
                .map_err(|e| ControllerError::Io(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
            let key = security::overlay::load_or_make_key(&cfg.data_dir)?;
            let net = cfg.security.overlay().map_err(ControllerError::Config)?;
            security::overlay::start(&cfg.wireguard, &key, net, &store).await?;
            key.get_public().to_base64()
        } else {
            String::new()
        };
        let grpc = bind(cfg.grpc.listen, "gRPC API", "--grpc-listen").await?;
        let http = bind(cfg.http.listen, "HTTP metrics listener", "--http-listen").await?;
        let verifier =
            Arc::new(link::verify::Verifier::new(cfg.security.require_enrollment, cfg.security.node_rate_per_s));
        verifier.set(&store.identities().await?);
        // The controller's own login to the embedded broker, new at every start.
        let (mut mqtt_user, mut mqtt_pass) = (cfg.mqtt.username.clone(), cfg.mqtt.password.clone());
        let mqtt_url = if cfg.mqtt.url.is_empty() {
            let max = (cfg.mqtt.max_payload_bytes * 4).max(16 << 20);
            let auth = if cfg.security.require_enrollment {
                let (pass, _) = auth::new_token("fcp").map_err(ControllerError::Io)?;
                mqtt_user = "fleet-controller".into();
                mqtt_pass = pass.expose().to_owned();
                Some(link::broker::auth_handler(mqtt_user.clone(), pass, verifier.clone()))
            } else {
                None
            };
            let addr = link::broker::start_embedded(cfg.mqtt.embedded_listen, max, auth).await?;
            format!("mqtt://{addr}")
        } else {
            cfg.mqtt.url.clone()
        };
        let grpc_addr = grpc.local_addr().map_err(|e| ControllerError::Io(e.to_string()))?;
        let http_addr = http.local_addr().map_err(|e| ControllerError::Io(e.to_string()))?;

        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(metrics.clone());
        let tasks = TaskTracker::new();

        let (client, eventloop) =
            link::mqtt::client(&mqtt_url, &mqtt_user, &mqtt_pass).map_err(ControllerError::Config)?;
        let (writer_tx, writer_rx) = ingest::queue::WriteQueue::new(cfg.ingest.queue_batches, cfg.ingest.queue_rows);
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        // Several writers overlap one write's database time with gathering the
        // next (each takes the queue in turn); SQLite has one writer anyway.
        let writers = if matches!(store, Store::Sqlite(_)) { 1 } else { cfg.ingest.writers };
        let writer_rx = Arc::new(tokio::sync::Mutex::new(writer_rx));
        for _ in 0..writers {
            let writer = ingest::writer::Writer {
                store: store.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                client: client.clone(),
                cfg: cfg.ingest.clone(),
                optimistic: true.into(),
            };
            tasks.spawn(writer.run(writer_rx.clone(), shutdown.clone()));
        }
        let api_mqtt = client.clone();
        let kafka_on = !cfg.kafka.brokers.is_empty();
        let bridge = if kafka_on && cfg.kafka.bridge {
            Some(Arc::new(link::kafka::Bridge::new(&cfg.kafka, metrics.clone())?))
        } else {
            None
        };
        if kafka_on && cfg.kafka.consume {
            let consumer = link::kafka::TelemetryConsumer::new(
                &cfg.kafka,
                writer_tx.clone(),
                metrics.clone(),
                cfg.mqtt.max_payload_bytes,
                verifier.clone(),
            )?;
            tasks.spawn(consumer.run(shutdown.clone()));
            tasks.spawn(link::kafka::status_reader(
                &cfg.kafka,
                registry.clone(),
                metrics.clone(),
                (cfg.mqtt.max_payload_bytes, verifier.clone()),
                shutdown.clone(),
            )?);
        }
        let cloud = jobs::cloud::load(&cfg.cloud).await?;
        let jobs = jobs::JobManager::start(
            cfg.jobs.clone(),
            cfg.router.router(),
            cloud,
            (client.clone(), registry.clone(), store.clone(), metrics.clone()),
            &tasks,
            &shutdown,
        );
        let dynsec = cfg.mqtt.dynsec.then(|| security::dynsec::Dynsec::new(client.clone(), mqtt_user.clone()));
        let on_change = tokio::sync::broadcast::channel::<String>(1024).0;
        let rotation = Arc::new(security::rotate::Rotation {
            store: store.clone(),
            mqtt: client.clone(),
            changes: on_change.clone(),
        });
        let reader = link::mqtt::Reader {
            jobs: Some(jobs.clone()),
            bridge,
            client,
            eventloop,
            registry: registry.clone(),
            metrics: metrics.clone(),
            writer_tx,
            max_payload_bytes: cfg.mqtt.max_payload_bytes,
            ready: ready_tx,
            shared_group: cfg.mqtt.shared_group.clone(),
            verifier: verifier.clone(),
            dynsec: dynsec.clone(),
            rotation: Some(rotation.clone()),
        };
        tasks.spawn(reader.run(shutdown.clone()));
        // Start serving once ingest is subscribed, so nothing published right
        // after start is missed; an external broker that is down only delays this.
        let subscribed = tokio::time::timeout(INGEST_READY_WAIT, ready.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok());
        if !subscribed {
            tracing::warn!(%mqtt_url, "MQTT broker not reachable yet; ingest keeps retrying in the background.");
        }
        let desired = desired::DesiredStates::new(store.clone(), api_mqtt.clone());
        tasks.spawn(desired.clone().run(ready.clone(), shutdown.clone()));

        tasks.spawn(store::Upkeep::new(store.clone(), cfg.storage.clone()).run(shutdown.clone()));

        let audit = security::audit::Auditor::start(store.clone(), &tasks, shutdown.clone());
        let guard = Arc::new(security::guard::Guard::new(
            store.clone(),
            audit.clone(),
            cfg.security.api_auth,
            cfg.security.api_rate_per_s,
            metrics.clone(),
        ));
        let facing = security::service::NodeFacing {
            broker_url: if cfg.security.node_broker_url.is_empty() {
                mqtt_url.clone()
            } else {
                cfg.security.node_broker_url.clone()
            },
            wg_public_key,
            wg_endpoint: if cfg.wireguard.enabled { cfg.wireguard.endpoint.clone() } else { String::new() },
        };
        let sec = Arc::new(security::service::Security::new(
            store.clone(),
            guard.clone(),
            audit,
            cfg.security.clone(),
            facing,
            dynsec,
            on_change,
        ));
        tasks.spawn(link::verify::keep_loaded(verifier, store.clone(), sec.on_change.subscribe(), shutdown.clone()));
        if cfg.wireguard.enabled {
            tasks.spawn(security::overlay::keep_in_step(
                cfg.wireguard.interface.clone(),
                store.clone(),
                sec.on_change.subscribe(),
                shutdown.clone(),
            ));
        }
        let api_access = ApiAccess {
            url: format!("{}://{grpc_addr}", if tls.is_some() { "https" } else { "http" }),
            ca_pem: tls.as_ref().and_then(|t| t.ca_pem.clone()),
            ca_file: tls.as_ref().and_then(|t| t.ca_pem.as_ref().map(|_| cfg.data_dir.join("tls/ca.pem"))),
            token_file: cfg.security.api_auth.then(|| admin_token_file.clone()),
        };
        let api = api::Api {
            registry: registry.clone(),
            store: store.clone(),
            shutdown: shutdown.clone(),
            desired,
            jobs: jobs.clone(),
            security: sec.clone(),
            rotation,
        };
        let enrollment = security::enroll::Enrollment(sec);
        let server = api::server::Server::new(grpc, tls.map(|t| t.config), api, enrollment, guard)?;
        tasks.spawn(server.run(shutdown.clone()));
        tasks.spawn(http::Http::new(http, metrics.clone(), store.clone()).run(shutdown.clone()));
        tasks.close();
        tracing::info!(%grpc_addr, %http_addr, %mqtt_url, store = store.backend(), "Controller started.");
        Ok(Self { grpc_addr, http_addr, mqtt_url, metrics, registry, store, jobs, api: api_access, tasks })
    }

    /// Waits for every task to finish (after `shutdown` was cancelled).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}
