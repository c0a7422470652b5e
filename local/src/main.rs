//! `fleet-local`: a whole Spark Fleet on one machine. Runs the controller on
//! its embedded defaults (rumqttd, SQLite) and N real agents on simulated
//! hardware in this process, each with its own MQTT connection and node id,
//! and prints a short live summary. With `--mqtt-url` (and `--controller-url`)
//! it runs only the agents against an existing controller and broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fleet_agent::board::HardwareBackend;
use fleet_agent::config::AgentConfig;
use fleet_controller::ControllerConfig;
use fleet_proto::v1::{ListNodesRequest, NodeState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(name = "fleet-local", version, about = "Run a controller and N simulated agents on this machine")]
struct Cli {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// Where the controller's SQLite store and the agents' state live.
    #[arg(long, default_value = "./fleet-data")]
    data_dir: PathBuf,
    /// Telemetry interval of every agent.
    #[arg(long, default_value = "1s")]
    interval: humantime::Duration,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Use this broker and start no controller (agents only).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// gRPC endpoint of the existing controller, for the summary.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    controller_url: String,
    /// The existing controller's CA (tls/ca.pem in its data directory).
    #[arg(long, env = "FLEET_CA")]
    ca: Option<PathBuf>,
    /// A viewer (or higher) API token's file for the summary.
    #[arg(long, env = "FLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Addresses of the in-process controller.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// Prefix of the agents' node ids.
    #[arg(long, default_value = "sim")]
    node_prefix: String,
    /// Model directory for the agents and the cloud tier (scripts/fetch-model
    /// fills target/models with all-MiniLM-L6-v2); without it only the built-in
    /// classifier `severity` runs.
    #[arg(long, env = "FLEET_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Simulated agents run each job this many times as long, like a Pi.
    #[arg(long, default_value_t = 5.0)]
    sim_slowdown: f64,
}

/// In an agent's data directory: while it exists, that simulated node runs on its battery.
const UNPLUG_FILE: &str = "unplugged";

/// mimalloc: model inference allocates and frees megabytes per layer; glibc
/// hands such blocks back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off,fleet_local=info".into()),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-local: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-local: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let controller_stop = CancellationToken::new();
    let agents_stop = CancellationToken::new();
    let (mqtt_url, access, controller) = match &cli.mqtt_url {
        Some(url) => (url.clone(), existing_controller(&cli)?, None),
        None => {
            let c = start_controller(&cli, controller_stop.clone()).await?;
            (c.mqtt_url.clone(), c.api.clone(), Some(c))
        }
    };
    if access.token_file.is_none() {
        println!(
            "  note         agents are not enrolled (no --token-file): the controller hears them only with \
             security.require_enrollment = false"
        );
    }
    let agents = start_agents(&cli, &mqtt_url, &access, &agents_stop).await?;
    println!("  agents       {} simulated ({}-000 ...), interval {}", cli.agents, cli.node_prefix, cli.interval);
    println!(
        "               pull a simulated mains plug: touch {}",
        cli.data_dir.join("agents").join(format!("{}-000", cli.node_prefix)).join(UNPLUG_FILE).display()
    );
    println!("Ctrl-C stops everything.");
    let started = Instant::now();
    report_until_stopped(&cli, &access, started).await;
    println!("Stopping agents...");
    agents_stop.cancel();
    agents.wait().await;
    if let Some(c) = controller {
        let rows = c.metrics.rows_written.get();
        let secs = started.elapsed().as_secs_f64();
        println!("rows_written={rows} seconds={secs:.1} rows_per_s={:.0}", rows as f64 / secs);
        controller_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    Ok(())
}

/// How to reach a controller that runs elsewhere (`--mqtt-url`).
fn existing_controller(cli: &Cli) -> anyhow::Result<fleet_controller::ApiAccess> {
    let ca_pem = match &cli.ca {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading --ca {}", p.display()))?),
        None => None,
    };
    Ok(fleet_controller::ApiAccess {
        url: cli.controller_url.clone(),
        ca_pem,
        ca_file: cli.ca.clone(),
        token_file: cli.token_file.clone(),
    })
}

/// Starts the controller on its embedded defaults and says where it is.
async fn start_controller(cli: &Cli, stop: CancellationToken) -> anyhow::Result<fleet_controller::Controller> {
    let mut cfg = ControllerConfig {
        data_dir: cli.data_dir.join("controller"),
        grpc: fleet_controller::api::server::GrpcConfig { listen: cli.grpc_listen, ..Default::default() },
        // Plain HTTP on loopback (the dashboard says so): a browser on this machine needs no CA.
        http: fleet_controller::http::HttpConfig { listen: cli.http_listen, tls: fleet_controller::http::HttpTls::Off },
        mqtt: fleet_controller::link::MqttConfig { embedded_listen: cli.mqtt_listen, ..Default::default() },
        ..Default::default()
    };
    cfg.cloud.model_dir = cli.model_dir.clone().unwrap_or_default();
    let c = fleet_controller::Controller::start(cfg, stop).await?;
    println!("Spark Fleet on this machine");
    println!(
        "  gRPC API     {}   (fleetctl nodes list: run from this directory, it finds the token and CA)",
        c.api.url
    );
    if let (Some(ca), Some(token)) = (&c.api.ca_file, &c.api.token_file) {
        println!("  TLS CA       {}   admin token {}", ca.display(), token.display());
    }
    match &c.api.token_file {
        Some(token) => println!(
            "  dashboard    http://{}/   log in with the admin token: the text of {}",
            c.http_addr,
            token.display()
        ),
        None => println!("  dashboard    http://{}/   (API tokens are off: no login)", c.http_addr),
    }
    println!("  metrics      http://{}/metrics", c.http_addr);
    println!("  MQTT broker  {}", c.mqtt_url);
    println!("  store        SQLite in {}", cli.data_dir.join("controller").display());
    println!("  jobs         fleetctl jobs submit --model severity --text \"disk full\"");
    Ok(c)
}

/// Starts the simulated agents, each enrolled first when there is a token to enroll with.
async fn start_agents(
    cli: &Cli,
    mqtt_url: &str,
    access: &fleet_controller::ApiAccess,
    stop: &CancellationToken,
) -> anyhow::Result<TaskTracker> {
    let agents = TaskTracker::new();
    for i in 0..cli.agents {
        let node_id = format!("{}-{i:03}", cli.node_prefix);
        let mut cfg =
            AgentConfig { data_dir: cli.data_dir.join("agents").join(&node_id), node_id, ..Default::default() };
        cfg.mqtt.url = mqtt_url.to_owned();
        cfg.telemetry.interval = cli.interval.into();
        cfg.telemetry.flush_interval = cli.interval.into();
        cfg.telemetry.status_interval = Duration::from_secs(10);
        cfg.hardware.backend = HardwareBackend::Sim;
        cfg.hardware.sim_seed = i as u64;
        cfg.hardware.sim_unplug_file = Some(cfg.data_dir.join(UNPLUG_FILE));
        cfg.labels.insert("site".into(), format!("site-{}", i % 3));
        cfg.inference.model_dir = cli.model_dir.clone().unwrap_or_default();
        cfg.inference.sim_slowdown = cli.sim_slowdown;
        if access.token_file.is_some() {
            enroll_if_needed(access, &cfg).await?;
        }
        let stop = stop.clone();
        agents.spawn(async move {
            if let Err(e) = fleet_agent::run(cfg, stop).await {
                eprintln!("fleet-local: agent stopped: {e}");
            }
        });
    }
    agents.close();
    Ok(agents)
}

/// Prints a summary every 5 s until Ctrl-C or `--duration`.
async fn report_until_stopped(cli: &Cli, access: &fleet_controller::ApiAccess, started: Instant) {
    let deadline = cli.duration.map(|d| started + Duration::from(d));
    let mut summary = tokio::time::interval(Duration::from_secs(5));
    summary.tick().await;
    let mut last = (Instant::now(), 0u64);
    let stop = fleet_controller::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let until_deadline = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(until_deadline) => break,
            _ = summary.tick() => {
                match fleet_summary(access).await {
                    Ok((online, known, stored)) => {
                        let dt = last.0.elapsed().as_secs_f64().max(1e-3);
                        let rate = stored.saturating_sub(last.1) as f64 / dt;
                        last = (Instant::now(), stored);
                        println!("[{:>5}s] nodes online {online}/{known}, samples stored {stored} ({rate:.0}/s)", started.elapsed().as_secs());
                    }
                    Err(e) => println!("[{:>5}s] controller not answering: {e:#}", started.elapsed().as_secs()),
                }
            }
        }
    }
}

/// Enrolls a simulated agent as a Pi would (`fleet-agent enroll`), unless
/// the controller knows it already: a bootstrap token from the admin API,
/// keys in the agent's data_dir, identity.toml; its messages are signed.
async fn enroll_if_needed(access: &fleet_controller::ApiAccess, cfg: &AgentConfig) -> anyhow::Result<()> {
    use fleet_proto::v1::{CreateBootstrapTokenRequest, ListBootstrapTokensRequest};
    let mut admin = access.admin_client().await?;
    let enrolled_here = fleet_agent::enroll::load(&cfg.data_dir)?.is_some();
    if enrolled_here {
        // Known to this controller (its store may have been deleted since)?
        let tokens = admin.list_bootstrap_tokens(ListBootstrapTokensRequest {}).await?.into_inner().tokens;
        if tokens.iter().any(|t| t.used_by == cfg.node_id) {
            return Ok(());
        }
    }
    let token = admin.create_bootstrap_token(CreateBootstrapTokenRequest::default()).await?.into_inner().token;
    let opts = fleet_agent::enroll::EnrollOptions {
        controller_url: access.url.clone(),
        ca_pem: access.ca_pem.clone().map(String::into_bytes),
        token,
        node_id: cfg.node_id.clone(),
        dir: cfg.data_dir.clone(),
        force: true,
    };
    fleet_agent::enroll::enroll(&opts).await.with_context(|| format!("enrolling {}", cfg.node_id))?;
    Ok(())
}

async fn fleet_summary(access: &fleet_controller::ApiAccess) -> anyhow::Result<(usize, usize, u64)> {
    let mut client = access.admin_client().await?;
    let nodes = client.list_nodes(ListNodesRequest::default()).await?.into_inner().nodes;
    let online =
        nodes.iter().filter(|n| n.status.as_ref().is_some_and(|s| s.state == NodeState::Online as i32)).count();
    Ok((online, nodes.len(), nodes.iter().map(|n| n.samples_stored).sum()))
}
