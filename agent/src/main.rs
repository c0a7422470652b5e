//! `fleet-agent`: parses flags, loads the config and runs the agent until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_agent::config::{AgentConfig, DEFAULT_CONFIG_TOML};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet-agent", version, about = "Spark Fleet node agent")]
struct Cli {
    /// Config file (TOML). Without it the documented defaults apply.
    #[arg(long, short, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `node_id`.
    #[arg(long, env = "FLEET_NODE_ID")]
    node_id: Option<String>,
    /// Overrides `mqtt.url`.
    #[arg(long, env = "FLEET_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long, env = "FLEET_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the documented default configuration.
    GenerateConfig,
    /// For a person at the node: enrollment, broker connection, last ack and
    /// spool backlog of the agent running with this config (exit 3 if none runs).
    Status,
    /// Enroll this node with a one-time bootstrap token (`fleetctl tokens create`):
    /// makes its keys here, and writes what the controller answers to identity.toml
    /// in data_dir. Then start the agent as usual.
    Enroll {
        /// The controller's gRPC URL, e.g. https://controller:50051.
        #[arg(long, env = "FLEET_CONTROLLER_URL")]
        controller: String,
        /// The bootstrap token (prefer FLEET_BOOTSTRAP_TOKEN or --token-file: flags show in `ps`).
        #[arg(long, env = "FLEET_BOOTSTRAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the bootstrap token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The controller's CA (its tls/ca.pem), for https://.
        #[arg(long, env = "FLEET_CA")]
        ca: Option<PathBuf>,
        /// Replace this node's keys and enrollment.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenerateConfig) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let cfg = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only for the running agent, not for its one-shot commands.
    let otel = if cli.command.is_none() { cfg.otel.clone() } else { fleet_net::otel::OtelConfig::default() };
    let traces = match logging(&rt, &otel) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Status) => {
            let (text, running) = rt.block_on(fleet_agent::local::status_text(&cfg.data_dir));
            print!("{text}");
            if running { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
        Some(Command::Enroll { controller, token, token_file, ca, force }) => {
            match rt.block_on(enroll(cfg, controller, token, token_file, ca, force)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet-agent enroll: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::GenerateConfig) | None => {
            let code = run(&rt, cfg);
            if let Some(t) = traces {
                // On a blocking thread while the runtime runs: the exporter's client lives on it.
                let _ = rt.block_on(async move { tokio::task::spawn_blocking(move || t.shutdown()).await });
            }
            code
        }
    }
}

/// Logs to stdout (the journal) at `RUST_LOG`'s levels (`info` when unset):
/// `level` or `target=level`, comma-separated. A plain target filter, not
/// `EnvFilter`: the agent does without the regex engine that one runs on.
/// With `otel.endpoint` set, spans go to that OTLP endpoint too.
fn logging(
    rt: &tokio::runtime::Runtime,
    otel: &fleet_net::otel::OtelConfig,
) -> Result<Option<fleet_net::otel::Traces>, fleet_net::NetError> {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let targets = match spec.parse::<tracing_subscriber::filter::Targets>() {
        Ok(t) if !spec.trim().is_empty() => t,
        Ok(_) => tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
        Err(e) => {
            eprintln!("fleet-agent: RUST_LOG={spec:?} is not `level` or `target=level,...` ({e}); logging at info");
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        }
    };
    // The exporter's gRPC client is made on the runtime.
    let _in = rt.enter();
    fleet_net::otel::init(targets, otel, "fleet-agent")
}

/// The config file (or the defaults) with the flags applied.
fn config(cli: &Cli) -> Result<AgentConfig, fleet_agent::AgentError> {
    let mut cfg = cli.config.as_deref().map(AgentConfig::load).transpose()?.unwrap_or_default();
    if let Some(v) = &cli.node_id {
        cfg.node_id.clone_from(v);
    }
    if let Some(v) = &cli.mqtt_url {
        cfg.mqtt.url.clone_from(v);
    }
    if let Some(v) = &cli.data_dir {
        cfg.data_dir.clone_from(v);
    }
    Ok(cfg)
}

/// Runs the agent until SIGINT or SIGTERM; prints what the run produced.
fn run(rt: &tokio::runtime::Runtime, cfg: AgentConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        // Handlers are in place before the agent says READY: on this
        // one-thread runtime a spawned task is first polled only later, and
        // a SIGTERM before that would kill the agent without its clean stop.
        let signals = fleet_net::signals::Signals::install();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            signals.wait().await;
            cancel.cancel();
        });
        fleet_agent::run(cfg, shutdown).await
    });
    match result {
        Ok(r) => {
            // One line for scripts and the journal: what this run produced and left behind.
            let c = r.counters;
            println!(
                "fleet-agent stopped: node_id={} boot_id={} samples_taken={} samples_acked={} batches_kept={} \
                 batches_dropped={} samples_dropped={} spool_quarantined_segments={} spool_torn_tails={}",
                r.node_id,
                r.boot_id,
                c.samples_taken,
                c.samples_acked,
                r.batches_kept,
                c.batches_dropped,
                c.samples_dropped,
                c.spool_quarantined_segments,
                c.spool_torn_tails
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            ExitCode::from(2)
        }
    }
}

async fn enroll(
    cfg: AgentConfig,
    controller_url: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let token = match (token, token_file) {
        (Some(t), _) => t,
        (None, Some(f)) => {
            std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
        }
        (None, None) => anyhow::bail!("give the bootstrap token: FLEET_BOOTSTRAP_TOKEN, --token-file or --token"),
    };
    let ca_pem = match ca {
        Some(p) => Some(std::fs::read(&p).map_err(|e| anyhow::anyhow!("cannot read the CA {}: {e}", p.display()))?),
        None => None,
    };
    let node_id = fleet_agent::resolve_node_id(&cfg)?;
    let opts =
        fleet_agent::enroll::EnrollOptions { controller_url, ca_pem, token, node_id, dir: cfg.data_dir.clone(), force };
    let e = fleet_agent::enroll::enroll(&opts).await?;
    println!(
        "enrolled as {} (overlay address {}/{}); broker {}; written to {}",
        e.node_id,
        e.overlay_address,
        e.overlay_prefix_len,
        e.broker_url,
        cfg.data_dir.join(fleet_agent::enroll::ENROLLMENT_FILE).display()
    );
    Ok(())
}
