//! Fixtures for Spark Fleet's end-to-end tests: real Mosquitto brokers on
//! free ports, fresh PostgreSQL databases, controllers and agents in-process,
//! and bounded waits that fail with a message saying what did not happen.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod enrolled;
pub mod faketime;
pub mod grafana;
pub mod lazyfs;
pub mod need;
pub mod otlp;
pub mod procs;
pub mod prometheus;
pub mod spool_files;
pub mod web;

use anyhow::{Context, bail};
use fleet_agent::board::HardwareBackend;
use fleet_agent::config::AgentConfig;
use fleet_controller::api::server::GrpcConfig;
use fleet_controller::config::ControllerConfig;
use fleet_controller::http::{HttpConfig, HttpTls};
use fleet_controller::store::{PostgresSchema, StorageConfig};
use fleet_net::client::FleetClient;
use fleet_proto::v1::{ListNodesRequest, Node, NodeState};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL that `scripts/test` starts; override with FLEET_TEST_DATABASE_URL.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://fleet:fleet@127.0.0.1:5432/postgres";

/// A port nobody listens on right now.
///
/// # Panics
/// If the OS has no free port.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `127.0.0.1:0`: let the OS pick.
#[must_use]
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `check` until it returns `Some`, or fails after `timeout` saying `what`.
///
/// # Errors
/// When `timeout` passes first.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Mosquitto broker of this test's own, on a free loopback port; killed on drop.
pub struct Mosquitto {
    pub url: String,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` (installed by scripts/test) and waits until it accepts connections.
    ///
    /// # Errors
    /// When mosquitto is not installed or does not come up.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_queued_messages 100000\n"
            ),
        )?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("mosquitto is not installed: run scripts/test (it installs it) or `apt-get install mosquitto`")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto")?;
        let m = Self { url: format!("mqtt://127.0.0.1:{port}"), port, child, _dir: dir };
        wait_for(Duration::from_secs(10), "mosquitto to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await?;
        Ok(m)
    }
}

/// A Mosquitto with the dynamic-security plugin: no anonymous access; the
/// controller logs in as the plugin's admin (`admin_user`/`admin_password`)
/// and manages the nodes' clients.
pub struct DynsecMosquitto {
    pub broker: Mosquitto,
    pub admin_user: String,
    pub admin_password: String,
}

impl DynsecMosquitto {
    /// Starts it on a free loopback port.
    ///
    /// # Errors
    /// When mosquitto, mosquitto_ctrl or the plugin are missing.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let plugin = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
            .iter()
            .map(|d| Path::new(d).join("mosquitto_dynamic_security.so"))
            .find(|p| p.exists())
            .context("mosquitto_dynamic_security.so not found: install Debian's mosquitto 2 (scripts/test does)")?;
        let admin_password = uuid::Uuid::new_v4().simple().to_string();
        let json = dir.path().join("dynsec.json");
        let out = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&json)
            .args(["fleet-admin", &admin_password])
            .output()
            .context("mosquitto_ctrl (package mosquitto-clients? it ships with mosquitto) not found")?;
        anyhow::ensure!(out.status.success(), "mosquitto_ctrl dynsec init: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous false\npersistence false\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nplugin {}\nplugin_opt_config_file {}\n",
                plugin.display(),
                json.display()
            ),
        )?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("mosquitto is not installed: run scripts/test (it installs it) or `apt-get install mosquitto`")?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let broker = Mosquitto { url: format!("mqtt://127.0.0.1:{port}"), port, child, _dir: dir };
        wait_for(Duration::from_secs(10), "mosquitto (dynsec) to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await?;
        Ok(Self { broker, admin_user: "fleet-admin".into(), admin_password })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database on the test PostgreSQL, dropped by `cleanup`.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// Creates `fleet_test_<random>`.
    ///
    /// # Errors
    /// When PostgreSQL is not reachable (run scripts/test, or set FLEET_TEST_DATABASE_URL).
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url =
            std::env::var("FLEET_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin_url).await.with_context(|| {
            format!("cannot reach the test PostgreSQL at {admin_url}: run scripts/test (it starts one) or set FLEET_TEST_DATABASE_URL")
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await?;
        pool.close().await;
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        Ok(Self { url: format!("{base}/{name}"), admin_url, name })
    }

    /// Drops the database.
    ///
    /// # Errors
    /// Database errors.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        let pool = sqlx::PgPool::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&pool)
            .await?;
        Ok(())
    }
}

/// Storage settings for a store test on PostgreSQL: the plain schema, or
/// (`timescale`) TimescaleDB, required.
#[must_use]
pub fn pg_storage(timescale: bool) -> StorageConfig {
    let postgres_schema = if timescale { PostgresSchema::Timescaledb } else { PostgresSchema::Postgres };
    StorageConfig { postgres_schema, ..Default::default() }
}

/// A TimescaleDB store in `db`; `None` (the skip said and counted) where the
/// test PostgreSQL has no TimescaleDB and scripts/test did not ask for it.
///
/// # Errors
/// Database errors, or no TimescaleDB where `FLEET_REQUIRE_TIMESCALEDB=1`.
pub async fn timescale_store(db: &TestDb, test: &str) -> anyhow::Result<Option<fleet_controller::store::Store>> {
    match fleet_controller::store::Store::open_postgres(&db.url, &pg_storage(true)).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.to_string().contains("cannot be made") => {
            need::missing(need::Need::TimescaleDb, test, &format!("TimescaleDB is not available: {e}"))?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A controller config on free ports; `mqtt_url` empty starts the embedded broker.
#[must_use]
pub fn controller_config(data_dir: &Path, mqtt_url: &str, database_url: &str) -> ControllerConfig {
    let mut cfg = ControllerConfig {
        data_dir: data_dir.to_owned(),
        database_url: database_url.to_owned(),
        grpc: GrpcConfig { listen: any_port(), ..Default::default() },
        // Plain HTTP: tests read /metrics with `http_get`; tests/tests/dashboard.rs covers TLS.
        http: HttpConfig { listen: any_port(), tls: HttpTls::Off },
        ..Default::default()
    };
    cfg.mqtt.url = mqtt_url.to_owned();
    cfg.mqtt.embedded_listen = any_port();
    cfg.ingest.max_write_delay = Duration::from_millis(20);
    cfg.storage.job_interval = Duration::from_millis(200);
    // TimescaleDB only where a test asks for it (the cluster has it preloaded).
    cfg.storage.postgres_schema = PostgresSchema::Postgres;
    // Most tests publish as nodes that never enrolled (the lab mode); the
    // security tests and `enroll_agent` use enrollment as production does.
    cfg.security.require_enrollment = false;
    cfg
}

/// Enrolls the agent of `cfg` with a fresh bootstrap token, as
/// `fleet-agent enroll` does: keys in its data_dir, identity.toml, and from
/// then on signed messages with the broker credentials it was given.
///
/// # Errors
/// When the controller refuses.
pub async fn enroll_agent(
    c: &fleet_controller::Controller,
    cfg: &AgentConfig,
) -> anyhow::Result<fleet_agent::enroll::Enrollment> {
    use fleet_proto::v1::CreateBootstrapTokenRequest;
    let mut admin = grpc(c).await?;
    let token = admin.create_bootstrap_token(CreateBootstrapTokenRequest::default()).await?.into_inner().token;
    let opts = fleet_agent::enroll::EnrollOptions {
        controller_url: c.api.url.clone(),
        ca_pem: c.api.ca_pem.clone().map(String::into_bytes),
        token,
        node_id: cfg.node_id.clone(),
        dir: cfg.data_dir.clone(),
        force: false,
    };
    Ok(fleet_agent::enroll::enroll(&opts).await?)
}

/// A fast agent config (200 ms samples, 2 s keep-alive) on simulated hardware.
#[must_use]
pub fn agent_config(node_id: &str, mqtt_url: &str, data_dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig { node_id: node_id.to_owned(), data_dir: data_dir.join(node_id), ..Default::default() };
    cfg.mqtt.url = mqtt_url.to_owned();
    cfg.mqtt.keep_alive = Duration::from_secs(2);
    cfg.mqtt.reconnect_max = Duration::from_secs(1);
    cfg.telemetry.interval = Duration::from_millis(200);
    cfg.telemetry.flush_interval = Duration::from_millis(200);
    cfg.telemetry.ack_timeout = Duration::from_secs(2);
    cfg.telemetry.status_interval = Duration::from_secs(2);
    cfg.hardware.backend = HardwareBackend::Sim;
    cfg
}

/// A running in-process agent.
pub struct AgentHandle {
    pub node_id: String,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<fleet_agent::AgentReport, fleet_agent::AgentError>>,
}

impl AgentHandle {
    /// Starts an agent.
    #[must_use]
    pub fn spawn(cfg: AgentConfig) -> Self {
        let stop = CancellationToken::new();
        let node_id = cfg.node_id.clone();
        let task = tokio::spawn(fleet_agent::run(cfg, stop.clone()));
        Self { node_id, stop, task }
    }

    /// Stops it cleanly and returns its report.
    ///
    /// # Errors
    /// When the agent failed or panicked.
    pub async fn stop(self) -> anyhow::Result<fleet_agent::AgentReport> {
        self.stop.cancel();
        Ok(self.task.await??)
    }

    /// Kills it without goodbye: the connection drops, the broker publishes the last will.
    pub fn crash(self) {
        self.task.abort();
    }
}

/// A gRPC client of the controller, over its TLS, with its first admin token.
///
/// # Errors
/// When the controller cannot be reached.
pub async fn grpc(c: &fleet_controller::Controller) -> anyhow::Result<FleetClient> {
    c.api.admin_client().await.map_err(anyhow::Error::msg)
}

/// A plain channel to the controller (TLS with its CA when on), no token:
/// for health, reflection and enrollment.
///
/// # Errors
/// When the controller cannot be reached.
pub async fn channel(c: &fleet_controller::Controller) -> anyhow::Result<tonic::transport::Channel> {
    fleet_net::client::channel(&c.api.url, c.api.ca_pem.as_deref().map(str::as_bytes)).await.map_err(anyhow::Error::msg)
}

/// The nodes the controller lists.
///
/// # Errors
/// gRPC errors.
pub async fn list_nodes(client: &mut FleetClient) -> anyhow::Result<Vec<Node>> {
    Ok(client.list_nodes(ListNodesRequest::default()).await?.into_inner().nodes)
}

/// The state of `node` in `nodes`.
#[must_use]
pub fn state_of(nodes: &[Node], node: &str) -> Option<NodeState> {
    nodes
        .iter()
        .find(|n| n.node_id == node)
        .and_then(|n| n.status.as_ref())
        .map(|s| NodeState::try_from(s.state).unwrap_or_default())
}

/// A value of a metric line in `/metrics` text (`name{labels} value`), summing matches.
#[must_use]
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A plain HTTP/1.0 GET on loopback; the whole response, headers included.
///
/// # Errors
/// When the server cannot be reached.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The model directory with `minilm` (scripts/fetch-model fills `target/models`;
/// `FLEET_MODEL_DIR` overrides). `None` when it is missing and not required
/// (the skip is said and counted, `need::missing`).
///
/// # Errors
/// When the model is missing and `FLEET_REQUIRE_MODEL=1` (scripts/test sets it).
pub fn model_dir(test: &str) -> anyhow::Result<Option<std::path::PathBuf>> {
    let dir = std::env::var_os("FLEET_MODEL_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models"),
        std::path::PathBuf::from,
    );
    if dir.join("minilm/model.toml").is_file() {
        return Ok(Some(dir));
    }
    let why = format!("model minilm not in {} (run scripts/fetch-model)", dir.display());
    need::missing(need::Need::Model, test, &why)?;
    Ok(None)
}
